"""Grading on a real Dask cluster (kata.cluster): a `dask scheduler` and two `dask worker`
processes on 127.0.0.1 grade a class while one worker is killed by its pid and then the
scheduler itself is killed and started again; every row must equal a local grading of the
same class. A coordinator interrupted mid-run resumes where it stopped."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kata import cluster, course
from tests.grading import ROOT, Cluster, examples, free_port, mutant_source

if os.environ.get("CI") == "true":
    import distributed  # noqa: F401  (make test installs the cluster extra: in CI a missing Dask fails, never skips)
else:
    pytest.importorskip("distributed", reason="grading on a cluster needs Dask: pip install -e '.[cluster]'")

TOPIC = "lm_training"  # no speed checks: its verdicts do not depend on the machine's load
pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask-logs"))
    c.start_scheduler()
    c.start_workers(2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> Path:
    """A class of correct, partly wrong, unstarted and broken submissions, and one refused (two hand-ins)."""
    folder = tmp_path_factory.mktemp("class")
    topic = course.get(TOPIC)
    mutants = [mutant_source(path) for t, path in examples("mutants") if t == TOPIC][:4]
    kinds = [topic.file_in(course.SOLUTIONS).read_text(), *mutants, topic.file_in(course.EXERCISES).read_text(), "def broken(:\n"]
    for i, code in enumerate(kinds * 2):
        (folder / f"s{i:02d}" / TOPIC).mkdir(parents=True)
        (folder / f"s{i:02d}" / TOPIC / f"{TOPIC}.py").write_text(code)
    (folder / "s00.zip").write_bytes(b"not a zip")  # s00 handed in twice: refused, one error row
    return folder


def kata_grade(submissions: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kata", "grade", str(submissions), "--out", str(out), "--topics", TOPIC, "--jobs", "2", *extra]


def rows(out: Path) -> list[dict]:
    with (out / "grades.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local_gradebook(students, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    subprocess.run(kata_grade(students, out), cwd=ROOT, check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def local(local_gradebook) -> list[dict]:
    return rows(local_gradebook)


def wait_for_results(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "results").glob("*.json"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the cluster graded nothing"
        time.sleep(0.2)


def test_a_class_graded_through_worker_and_scheduler_failures_equals_local_grading(dask_cluster, students, local, tmp_path):
    out = tmp_path / "gradebook"
    proc = subprocess.Popen(kata_grade(students, out, "--cluster", dask_cluster.address), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_results(out, 2, proc)
    dask_cluster.kill(dask_cluster.workers[0])  # mid-run: its task goes to the other worker
    wait_for_results(out, 4, proc)
    dask_cluster.kill(dask_cluster.scheduler)  # the scheduler too; its workers end with it
    for worker in dask_cluster.workers:
        if worker.poll() is None:
            dask_cluster.kill(worker)
    dask_cluster.start_scheduler()
    dask_cluster.start_workers(2)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "lost the cluster" in stderr
    got = rows(out)
    assert got == local  # every student, exactly one row, the same as graded locally
    assert len(got) == len({r["student"] for r in got}) == len(list(students.glob("s*[0-9]")))
    assert any(r["status"] == "error" for r in got if r["student"] == "s00")


def test_an_interrupted_coordinator_resumes(dask_cluster, students, local, tmp_path):
    out = tmp_path / "gradebook"
    proc = subprocess.Popen(kata_grade(students, out, "--cluster", dask_cluster.address), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_results(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    done = len(list((out / "results").glob("*.json")))
    again = subprocess.run(kata_grade(students, out, "--cluster", dask_cluster.address), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{done} already graded" in again.stderr
    assert rows(out) == local


def test_a_class_already_graded_needs_no_cluster(students, local_gradebook, local, tmp_path):
    out = tmp_path / "gradebook"
    shutil.copytree(local_gradebook, out)
    proc = subprocess.run(kata_grade(students, out, "--cluster", f"tcp://127.0.0.1:{free_port()}"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0 to grade" in proc.stderr and rows(out) == local


def test_a_worker_with_another_suite_is_refused():
    payload = {"suite": "0" * 64, "limits": {}, "require_sandbox": False}
    with pytest.raises(cluster.WorkerRefused, match="install the same version of the suite on every worker"):
        cluster._worker_limits(payload)


def test_no_scheduler_is_one_clear_line(students, tmp_path):
    proc = subprocess.run(kata_grade(students, tmp_path / "gb", "--cluster", f"tcp://127.0.0.1:{free_port()}"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("kata: cannot reach a Dask scheduler at tcp://127.0.0.1:")
    assert not (tmp_path / "gb" / "grades.csv").exists()


class FakeClient:
    """What _usable_workers asks of a distributed.Client: each worker's suite version."""

    def __init__(self, versions: dict[str, str]):
        self.versions = versions

    def run(self, fn):
        assert fn is cluster.suite_version
        return dict(self.versions)


def test_workers_running_another_suite_get_no_gradings(capsys):
    mine, other = cluster.suite_version(), "f" * 64
    refused: set[str] = set()
    usable = cluster._usable_workers(FakeClient({"tcp://a:1": mine, "tcp://b:2": other}), refused)
    assert usable == ["tcp://a:1"] and refused == {"tcp://b:2"}
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"kata: refused: worker tcp://b:2 runs suite {other[:12]}, the coordinator {mine[:12]}: install the same version of the suite on every worker"]
    assert cluster._usable_workers(FakeClient({"tcp://a:1": mine}), set()) is None  # all agree: any worker
    with pytest.raises(RuntimeError, match="no worker of the cluster can grade"):
        cluster._usable_workers(FakeClient({"tcp://b:2": other}), set())
