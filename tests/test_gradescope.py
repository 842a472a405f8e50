"""`make gradescope`: the autograder zip, and its run_autograder run against a fake
/autograder tree (AUTOGRADER_ROOT) on a correct and a broken submission."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.grading import ROOT, TESTS, run_kata


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "gradescope-autograder.zip"
    proc = run_kata("gradescope", "--out", str(out), "--topics", "attention")
    assert proc.returncode == 0, proc.stderr
    return out


def run_autograder(bundle: Path, tmp_path: Path, files: dict[str, Path]) -> dict:
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)
    with zipfile.ZipFile(bundle) as z:
        z.extractall(root / "source")
        for info in z.infolist():  # zipfile drops permission bits; Gradescope keeps them
            mode = info.external_attr >> 16
            if mode:
                os.chmod(root / "source" / info.filename, stat.S_IMODE(mode))
    for name, source in files.items():
        (root / "submission" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / "submission" / name)
    (root / "submission").mkdir(exist_ok=True)
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "KATA_PYTHON": sys.executable}
    proc = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((root / "results" / "results.json").read_text())


def test_bundle_has_the_scripts_at_its_top_and_the_suite(bundle):
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    assert {"setup.sh", "run_autograder", "topics.txt", "course.toml", "pyproject.toml", "kata/grade.py",
            "graders/test_attention.py", "solutions/attention/attention.py"} <= names  # fmt: skip
    assert modes["run_autograder"] & stat.S_IXUSR and modes["setup.sh"] & stat.S_IXUSR
    assert not any(n.startswith(("exercises/", "tests/", ".venv/")) for n in names)


def validate(results: dict) -> None:
    """The fields Gradescope reads from results.json, with their types."""
    assert isinstance(results["score"], (int, float))
    assert results["tests"]
    for test in results["tests"]:
        assert isinstance(test["name"], str) and isinstance(test["output"], str)
        assert isinstance(test["score"], (int, float)) and isinstance(test["max_score"], (int, float))
        assert 0 <= test["score"] <= test["max_score"]
        assert test["status"] in ("passed", "failed")
        assert test["visibility"] in ("hidden", "after_due_date", "after_published", "visible")
    assert results["score"] == sum(t["score"] for t in results["tests"])


def test_correct_submission_gets_full_marks(bundle, tmp_path):
    results = run_autograder(bundle, tmp_path, {"attention/attention.py": ROOT / "solutions/attention/attention.py"})
    validate(results)
    assert results["score"] == sum(t["max_score"] for t in results["tests"]) > 0
    assert all(t["status"] == "passed" for t in results["tests"])


def test_broken_flat_submission_gets_partial_marks_with_reasons(bundle, tmp_path):
    # Gradescope uploads are often flat: attention.py at the top of the submission.
    results = run_autograder(bundle, tmp_path, {"attention.py": TESTS / "mutants/attention/no_scaling.py"})
    validate(results)
    failed = [t for t in results["tests"] if t["status"] == "failed"]
    assert failed and 0 < results["score"] < sum(t["max_score"] for t in results["tests"])
    assert all(t["output"].startswith(("WRONG", "CRASHED", "TOO SLOW", "BROKE A RULE")) for t in failed)


def test_empty_submission_scores_zero_out_of_the_full_max(bundle, tmp_path):
    results = run_autograder(bundle, tmp_path, {})
    validate(results)
    (test,) = results["tests"]
    assert test["score"] == 0 and test["max_score"] > 0 and test["output"].startswith("missing")
