"""The learner's verbs, driven as a learner would, each in a private copy of the project
(so nothing here touches this checkout's exercises/ or .kata/)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from kata import course
from tests.grading import ROOT

PARTS = ["kata", "graders", "solutions", "exercises", "course.toml", "conftest.py", "pyproject.toml"]
LEARNER_FILE = "exercises/attention/attention.py"


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "katas"
    root.mkdir()
    for part in PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        else:
            shutil.copy(src, root / part)
    return root


def kata(project: Path, *args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    # Run from the copy, so `-m kata` imports the copy's engine and works on the copy's files.
    return subprocess.run([sys.executable, "-m", "kata", *args], cwd=project, capture_output=True, text=True, timeout=timeout, **kw)


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True).stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_solutions_branch_leaves_uncommitted_work_alone(project):
    git(project, "init", "-q", "-b", "main")
    git(project, "-c", "user.name=L", "-c", "user.email=l@x", "add", "-A")
    git(project, "-c", "user.name=L", "-c", "user.email=l@x", "commit", "-qm", "start")
    mine = project / LEARNER_FILE
    mine.write_text(mine.read_text() + "\n# my unfinished work\n")  # modified, not staged
    staged = project / "exercises/sampling/sampling.py"
    staged.write_text(staged.read_text() + "\n# staged work\n")
    git(project, "add", str(staged))
    (project / "notes.txt").write_text("untracked")
    before = {p: digest(project / p) for p in (LEARNER_FILE, "exercises/sampling/sampling.py", "notes.txt")}
    status, index, head = git(project, "status", "--porcelain"), git(project, "diff", "--cached"), git(project, "rev-parse", "HEAD")

    for _ in range(2):  # created, then refreshed
        proc = kata(project, "solutions-branch")
        assert proc.returncode == 0, proc.stderr
    assert {p: digest(project / p) for p in before} == before
    assert git(project, "status", "--porcelain") == status and git(project, "diff", "--cached") == index
    assert git(project, "rev-parse", "HEAD") == head and git(project, "branch", "--show-current").strip() == "main"
    for topic in ("attention", "sampling"):
        answer = git(project, "show", f"solutions:exercises/{topic}/{topic}.py")
        assert answer == (project / f"solutions/{topic}/{topic}.py").read_text()
    assert "+    ones = torch.ones" in git(project, "diff", "HEAD", "solutions", "--", "exercises/attention")
    assert git(project, "rev-parse", "solutions^") == head


def test_solutions_branch_outside_git_says_so(project):
    proc = kata(project, "solutions-branch")
    assert proc.returncode == 2
    assert "not a git repository" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_reset_twice_keeps_two_backups(project):
    mine = project / LEARNER_FILE
    stub = mine.read_text()
    mine.write_text("my attempt\n")
    first = kata(project, "reset", "attention")
    second = kata(project, "reset", "attention")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "saved as .kata/backups/attention/" in first.stdout
    backups = sorted((project / ".kata/backups/attention").iterdir())
    assert sorted(b.read_text() for b in backups) == sorted(["my attempt\n", stub])
    assert mine.read_text() == stub


def test_hints_one_at_a_time_then_all(project):
    outputs = [kata(project, "hint", "attention").stdout for _ in range(10)]
    n = int(outputs[0].split(" of ")[1].split()[0])
    assert outputs[0].startswith(f"Hint 1 of {n} ({n - 1} more")
    assert outputs[n - 1].startswith(f"Hint {n} of {n} (that was the last one)")
    assert all(o.startswith("That was the last hint") for o in outputs[n:])
    everything = kata(project, "hint", "attention", "--n", "all").stdout
    assert all(f"Hint {i} of {n}:" in everything for i in range(1, n + 1))
    assert "NotImplementedError" not in kata(project, "hint", "sampling").stdout


def test_list_survives_a_corrupt_state_file_and_shows_progress(project):
    (project / ".kata").mkdir()
    (project / ".kata/state.json").write_text("{not json")
    proc = kata(project, "list")
    assert proc.returncode == 0 and "unreadable" in proc.stderr
    assert list((project / ".kata").glob("state.corrupt-*.json"))
    assert f"0 of {len(course.topic_names())} topics passing" in proc.stdout
    shutil.copy(project / "solutions/attention/attention.py", project / LEARNER_FILE)
    assert kata(project, "check", "attention", "--device", "cpu").returncode == 0
    row = next(line for line in kata(project, "list").stdout.splitlines() if line.startswith("attention "))
    points = row.split()[-2]
    assert row.split()[-1] == "passing" and points.split("/")[0] == points.split("/")[1] != "0", row
    (project / LEARNER_FILE).write_text((project / LEARNER_FILE).read_text() + "\n# more\n")
    row = next(line for line in kata(project, "list").stdout.splitlines() if line.startswith("attention "))
    assert row.endswith("passing (edited since)")


@pytest.mark.parametrize("poll", [False, True], ids=["file_events", "polling"])
def test_watch_grades_again_after_a_save(project, poll):
    env = {**os.environ, "KATA_WATCH_POLL": "1" if poll else "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kata", "watch", "attention", "--device", "cpu", "--runs", "2"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("watching"):
                time.sleep(1.0)
                mine = project / LEARNER_FILE
                mine.write_text(mine.read_text() + "\n# saved\n")
                break
            assert time.monotonic() < deadline, "".join(seen)
        rest, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert out.count("grading exercises/attention/attention.py") == 2, out
    assert ("polling" if poll else "file events") in out


def test_notebook_is_paired_and_check_grades_its_edits(project):
    proc = kata(project, "notebook", "attention")
    assert proc.returncode == 0, proc.stderr
    nb_path = project / "exercises/attention/attention.ipynb"
    nb = nbformat.read(str(nb_path), as_version=4)
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:light"
    # The learner writes causal_mask in the notebook (as in Jupyter or Colab) and saves it.
    cell = next(c for c in nb.cells if "def causal_mask" in c.source)
    cell.source = cell.source.replace(
        '    raise NotImplementedError("attention.causal_mask")',
        "    t_k = t_q if t_k is None else t_k\n    if t_k < t_q:\n        raise ValueError('t_k < t_q')\n"
        "    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(t_k - t_q)",
    )
    time.sleep(1.1)  # a later modification time than the .py, as a real save would have
    nbformat.write(nb, str(nb_path))
    proc = kata(project, "check", "attention", "--device", "cpu", "--only", "test_causal_mask_square,test_causal_mask_is_bottom_right")
    assert "synced" in proc.stdout and proc.returncode == 0, proc.stdout + proc.stderr
    assert ".tril(t_k - t_q)" in (project / LEARNER_FILE).read_text()
