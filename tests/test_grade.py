"""`kata grade`: a whole class graded with the learners' graders, hostile submissions
contained, zip archives checked, results resumable, scores as the checks add up.

One class is graded once (module fixture) and each test reads its part of the gradebook."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from kata import grade
from tests.grading import ROOT, TESTS, mutant_source, warm_env

# One class is graded for all these tests: keep them on one xdist worker (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("graded-class")

HOSTILE = TESTS / "hostile"
SOLUTION = (ROOT / "solutions/attention/attention.py").read_text()
MUTANT = mutant_source(TESTS / "mutants/attention/no_scaling.py")
STUB = ROOT / "exercises/attention/attention.py"
FUTURE = "from __future__ import annotations\n"
assert FUTURE in SOLUTION
EXPECTED = {
    "honest": "passed",
    "scaling_forgotten": "partial",
    "not_begun": "not_started",
    "nothing_handed_in": "missing",
    "hangs_at_import": "timeout",
    "exhausts_memory": "error",
    "exits_early": "error",
    "fake_summary": "error",
    "forges_results": "error",
    "writes_files": "error",
    "writes_outside": "error",
    "crashes_interpreter": "error",
    "zip_honest": "passed",
    "zip_absolute_path": "error",
    "zip_parent_path": "error",
    "zip_link": "error",
    "zip_oversized": "error",
    "zip_not_a_zip": "error",
}


def put(folder: Path, student: str, source: str) -> None:
    path = folder / student / "attention" / "attention.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)


def make_zip(path: Path, entries: dict[str, bytes], links: tuple[str, ...] = ()) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            z.writestr(info, "/etc/passwd")


# The attacks on the judge (tests/hostile/tamper_*.py) run inside a partly wrong solution:
# whatever they patch, they may not score more than that code scores untampered. The escapes
# (escapes_*.py) run inside a correct one: they may not leave any trace.
TAMPER = sorted(p.stem for p in HOSTILE.glob("tamper_*.py"))
ESCAPES = sorted(p.stem for p in HOSTILE.glob("escapes_*.py"))
MARKER = "honest-student-secret-7f3a"  # in the honest student's file: no one else may see it


def hostile_source(name: str, **values) -> str:
    text = (HOSTILE / f"{name}.py").read_text()
    for key, value in values.items():
        text = text.replace(f"__{key.upper()}__", str(value))
    return text


def build_class(folder: Path, trace: Path | None = None, port: int = 9) -> None:
    put(folder, "honest", SOLUTION + f"\n# {MARKER}\n")
    put(folder, "scaling_forgotten", MUTANT)
    put(folder, "not_begun", STUB.read_text())
    (folder / "nothing_handed_in").mkdir()
    # The honest student also left a conftest.py and a sitecustomize.py: never loaded.
    (folder / "honest" / "conftest.py").write_text("import os\nos._exit(3)\n")
    (folder / "honest" / "sitecustomize.py").write_text("import os\nos._exit(3)\n")
    for sid in EXPECTED:
        if (HOSTILE / f"{sid}.py").is_file():
            # Each attack runs as a correct solution is imported: only the attack can cost the marks.
            put(folder, sid, SOLUTION.replace(FUTURE, FUTURE + (HOSTILE / f"{sid}.py").read_text(), 1))
    values = {"trace": trace, "port": port, "submissions": folder, "marker": MARKER}
    for sid in TAMPER:
        put(folder, sid, MUTANT.replace(FUTURE, FUTURE + hostile_source(sid, **values), 1))
    for sid in ESCAPES:
        put(folder, sid, SOLUTION.replace(FUTURE, FUTURE + hostile_source(sid, **values), 1))
    code = SOLUTION.encode()
    make_zip(folder / "zip_honest.zip", {"zip_honest/attention/attention.py": code})
    make_zip(folder / "zip_absolute_path.zip", {"/attention/attention.py": code})
    make_zip(folder / "zip_parent_path.zip", {"attention/../../attention/attention.py": code})
    make_zip(folder / "zip_link.zip", {"attention/attention.py": code}, links=("attention/evil",))
    make_zip(folder / "zip_oversized.zip", {"attention/attention.py": code, "big.bin": bytes(grade.MAX_ZIP_BYTES + 1)})
    (folder / "zip_not_a_zip.zip").write_text("not a zip")


def run_grade(submissions: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kata", "grade", str(submissions), "--out", str(out), "--topics", "attention",
           "--jobs", "2", "--student-timeout", "15", "--memory-mb", "3072", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=warm_env())


def repo_state() -> str:
    """The project's files that differ from the last commit, new ones included."""
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True).stdout


def rows(out: Path) -> list[dict]:
    with (out / "grades.csv").open() as f:
        return list(csv.DictReader(f))


class Listener:
    """A TCP listener on 127.0.0.1 that notes every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    submissions, out, trace = root / "submissions", root / "gradebook", root / "trace"
    submissions.mkdir()
    trace.mkdir()
    listener = Listener()
    build_class(submissions, trace, listener.port)
    before = repo_state()
    proc = run_grade(submissions, out)
    after = repo_state()
    time.sleep(3)  # a child that escaped would write its trace after 2 s
    listener.stop()
    return submissions, out, proc, before, after, trace, listener


def test_every_student_gets_the_status_they_earned(graded):
    _, out, proc, *_ = graded
    assert proc.returncode == 0, proc.stderr
    got = {r["student"]: r["status"] for r in rows(out)}
    assert set(got) == {*EXPECTED, *TAMPER, *ESCAPES}, proc.stderr
    assert {sid: got[sid] for sid in EXPECTED} == EXPECTED, proc.stderr


def test_hostile_rows_score_nothing_and_say_why(graded):
    _, out, *_ = graded
    for sid, status in EXPECTED.items():
        data = json.loads((out / "results" / f"{sid}.json").read_text())
        (topic,) = data["extra_data"]["topics"]
        if status in ("error", "timeout"):
            assert topic["score"] == 0 and topic["message"], (sid, topic)
    messages = {sid: json.loads((out / "results" / f"{sid}.json").read_text())["extra_data"]["topics"][0]["message"] for sid in EXPECTED}
    assert "wrote files" in messages["writes_files"]
    assert "grading forbids writing files: /tmp/kata-hostile-owned.txt" in messages["writes_outside"]
    assert not Path("/tmp/kata-hostile-owned.txt").exists() and not Path("/tmp/kata-hostile-owned-by-shell.txt").exists()
    assert "link" in messages["zip_link"] and "absolute" in messages["zip_absolute_path"]
    assert "leaving its folder" in messages["zip_parent_path"] and "MiB" in messages["zip_oversized"]
    assert "not a readable zip" in messages["zip_not_a_zip"]


def test_tampering_with_the_judge_earns_nothing(graded):
    """A submission may patch anything in its own process (the grader's code through gc,
    kata.checks, pytest's reports, torch): the judge is another process, so its score is
    at most what the same code scores untampered."""
    _, out, proc, *_ = graded
    scores = {r["student"]: float(r["score"]) for r in rows(out)}
    assert scores["scaling_forgotten"] > 0, proc.stderr
    for sid in TAMPER:
        assert scores[sid] <= scores["scaling_forgotten"], (sid, scores[sid], scores["scaling_forgotten"])


def test_escapes_leave_no_trace(graded):
    """Native writes, network connections, forks through libc and reading other students'
    files are stopped by the kernel (kata.sandbox), so the correct code around them still
    passes and nothing is left: no file, no connection, no stolen text, and no process (the
    forked child would write its trace 2 s later; the fixture waits 3 s)."""
    _, out, proc, _, _, trace, listener = graded
    if "no kernel sandbox" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[0])
    assert list(trace.iterdir()) == [], "an escape left a file"
    assert listener.connections == 0, "a submission connected to the grading machine's network"
    statuses = {r["student"]: r["status"] for r in rows(out)}
    assert {sid: statuses[sid] for sid in ESCAPES} == {sid: "passed" for sid in ESCAPES}
    for sid in statuses:
        if sid != "honest":
            text = (out / "results" / f"{sid}.json").read_text() + (out / "feedback" / f"{sid}.md").read_text()
            assert MARKER not in text, f"{sid} saw the honest student's file"


def test_nothing_is_written_outside_the_gradebook(graded):
    _, _, _, before, after, *_ = graded
    assert before == after


def test_csv_and_gradescope_formats(graded):
    _, out, *_ = graded
    text = (out / "grades.csv").read_text()
    assert text.splitlines()[0] == "student,topic,score,max_score,status"
    table = rows(out)
    assert len(table) == len(EXPECTED) + len(TAMPER) + len(ESCAPES) and {r["status"] for r in table} <= set(grade.STATUSES)
    max_score = {r["max_score"] for r in table}
    assert len(max_score) == 1  # the same for every student, whatever happened to them
    honest = json.loads((out / "results" / "honest.json").read_text())
    assert honest["score"] == float(max_score.pop()) == sum(t["max_score"] for t in honest["tests"])
    for test in honest["tests"]:
        assert set(test) >= {"name", "score", "max_score", "status", "output", "visibility"}
        assert test["status"] in ("passed", "failed") and test["visibility"] in ("visible", "hidden", "after_due_date", "after_published")
    assert (out / "feedback" / "scaling_forgotten.md").read_text().startswith("# Feedback for scaling_forgotten")


def test_known_mistakes_reach_feedback_results_and_the_class_summary(graded):
    """scaling_forgotten hands in the no_scaling mutant: its mistake is named where the
    student and the instructor look; the stub and the honest solution get none."""
    _, out, proc, *_ = graded
    topics = {sid: json.loads((out / "results" / f"{sid}.json").read_text())["extra_data"]["topics"][0] for sid in ("scaling_forgotten", "not_begun", "honest")}
    assert [m["name"] for m in topics["scaling_forgotten"]["mistakes"]] == ["no_scaling"]
    assert topics["not_begun"]["mistakes"] == [] and topics["honest"]["mistakes"] == []
    assert "Looks like a known mistake: **no_scaling**" in (out / "feedback" / "scaling_forgotten.md").read_text()
    table = list(csv.DictReader((out / "mistakes.csv").open()))
    assert {"topic": "attention", "mistake": "no_scaling"}.items() <= next(r for r in table if r["mistake"] == "no_scaling").items()
    assert "attention: no_scaling (" in proc.stderr


def test_partial_credit_is_the_sum_of_passing_checks(graded):
    _, out, *_ = graded
    data = json.loads((out / "results" / "scaling_forgotten.json").read_text())
    passed = sum(t["score"] for t in data["tests"])
    assert 0 < passed < sum(t["max_score"] for t in data["tests"])
    assert data["extra_data"]["topics"][0]["score"] == passed == data["score"]


def test_summarise_weighs_checks_by_points():
    checks = [
        {"name": "a", "verdict": "passed", "points": 2.0},
        {"name": "b", "verdict": "wrong", "points": 3.0},
        {"name": "c", "verdict": "skipped", "points": 5.0},
    ]
    r = grade.summarise("attention", checks)
    assert (r.score, r.max_score, r.status) == (2.0, 5.0, "partial")
    assert grade.summarise("attention", [{"name": "a", "verdict": "not started", "points": 1.0}]).status == "not_started"
    assert grade.summarise("attention", [{"name": "a", "verdict": "wrong", "points": 1.0, "message": "x"}]).status == "failed"
    load_error = [{"name": n, "verdict": "crashed", "points": 1.0, "message": "SyntaxError"} for n in "ab"]
    assert grade.summarise("attention", load_error).status == "error"


def test_an_interrupted_run_resumes_without_regrading(graded, tmp_path):
    submissions, out, *_ = graded
    resumed = tmp_path / "gradebook"
    shutil.copytree(out, resumed)
    # Interrupted: one student's result never written, the CSV never rebuilt.
    (resumed / "results" / "honest.json").unlink()
    (resumed / "grades.csv").write_text("student,topic,score,max_score,status\nhonest,attention,0,60,err\n")
    small = tmp_path / "submissions"
    small.mkdir()
    for sid in ("honest", "scaling_forgotten", "not_begun", "nothing_handed_in"):
        shutil.copytree(submissions / sid, small / sid)
    proc = run_grade(small, resumed)
    assert proc.returncode == 0, proc.stderr
    assert "3 already graded, 1 to grade" in proc.stderr
    got = [(r["student"], r["status"]) for r in rows(resumed)]
    assert got == sorted((sid, EXPECTED[sid]) for sid in ("honest", "scaling_forgotten", "not_begun", "nothing_handed_in"))


HIDDEN_CHECK = '''
import torch
from kata import checks

SECRET_MARKER = "the instructor's hidden code"


def test_causal_mask_large(impl, device):
    got = impl.load("attention").causal_mask(50, 64, device=device)
    if not torch.equal(got.cpu(), torch.ones(50, 64, dtype=torch.bool).tril(14)):
        raise checks.Wrong("causal_mask(50, 64) is not the bottom-right triangle")
'''


def test_hidden_checks_run_only_when_grading_and_force_regrades(tmp_path):
    submissions, out, hidden = tmp_path / "submissions", tmp_path / "gradebook", tmp_path / "hidden"
    put(submissions, "honest", SOLUTION)
    put(submissions, "top_left", mutant_source(TESTS / "mutants/attention/causal_mask_top_left.py"))
    # Looks for the hidden checks in its process (sys.modules) and on disk, to show them in its feedback.
    put(submissions, "prober", SOLUTION.replace(FUTURE, FUTURE + hostile_source("reads_hidden_grader", hidden=hidden), 1))
    hidden.mkdir()
    (hidden / "test_attention_hidden.py").write_text(HIDDEN_CHECK)
    first = run_grade(submissions, out)
    assert first.returncode == 0, first.stderr
    plain = {r["student"]: r for r in rows(out)}

    again = run_grade(submissions, out, "--hidden", str(hidden))
    assert "3 already graded, 0 to grade" in again.stderr  # without --force nothing is redone
    forced = run_grade(submissions, out, "--hidden", str(hidden), "--force")
    assert forced.returncode == 0 and "0 already graded, 3 to grade" in forced.stderr, forced.stderr
    graded = {r["student"]: r for r in rows(out)}
    for sid in ("honest", "top_left"):
        assert float(graded[sid]["max_score"]) == float(plain[sid]["max_score"]) + 1
    results = json.loads((out / "results/top_left.json").read_text())
    (hidden_test,) = [t for t in results["tests"] if "hidden: test_causal_mask_large" in t["name"]]
    assert hidden_test["status"] == "failed" and hidden_test["visibility"] == "after_due_date"
    feedback = (out / "feedback/top_left.md").read_text()
    assert "hidden: test_causal_mask_large" in feedback and "SECRET_MARKER" not in feedback
    assert graded["honest"]["status"] == "passed"
    # The hidden checks run in the judge, and their file is out of the executor's reach.
    stolen = (out / "feedback/prober.md").read_text() + (out / "results/prober.json").read_text()
    assert "the instructor's hidden code" not in stolen and graded["prober"]["status"] == "passed", stolen[:2000]


def test_nothing_is_written_when_the_reference_fails(tmp_path, monkeypatch):
    """The reference is graded alongside the first students: their results wait for it, and
    a reference that fails (a broken grading machine) leaves no student's file behind."""
    from kata import course

    subs, out = tmp_path / "subs", tmp_path / "gradebook"
    for sid in ("s1", "s2", "s3"):
        (subs / sid / "attention").mkdir(parents=True)
        (subs / sid / "attention" / "attention.py").write_text("x = 1\n")

    def broken_reference(*args, **kwargs):
        time.sleep(0.3)  # the students' gradings finish first
        raise RuntimeError("the reference solution does not pass the attention grader here")

    monkeypatch.setattr(grade.zygote, "start", lambda **kwargs: None)
    monkeypatch.setattr(grade, "reference_max_scores", broken_reference)
    monkeypatch.setattr(grade, "grade_topic", lambda impl, topic, *args: grade.TopicResult(topic.name, "passed", 1.0, 1.0))
    with pytest.raises(RuntimeError, match="reference solution"):
        grade.grade_class(subs, out, [course.get("attention")], jobs=2, limits=grade.Limits())
    assert not list(out.rglob("*.json")) and not list(out.rglob("*.md"))
