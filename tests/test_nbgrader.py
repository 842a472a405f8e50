"""`make nbgrader` drives the real nbgrader: generate_assignment, autograde of a correct
and a wrong student notebook, export; the exported scores equal `kata grade`'s for the
same code."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kata.nbgrader_course import fill_in
from tests.grading import ROOT, TESTS, run_kata

STUDENTS = {"alice": ROOT / "solutions/attention/attention.py", "bob": TESTS / "mutants/attention/no_scaling.py"}


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nbgrader") / "course"
    proc = run_kata("nbgrader", "--out", str(out), "--topics", "attention")
    assert proc.returncode == 0, proc.stderr
    return out


def test_source_notebook_has_readme_solution_and_graded_cells(course):
    nb = nbformat.read(str(course / "source/attention/attention.ipynb"), as_version=4)
    meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source == (ROOT / "exercises/attention/README.md").read_text()
    solutions = [c for c, m in zip(nb.cells, meta) if m.get("solution")]
    assert len(solutions) == 1 and "### BEGIN SOLUTION" in solutions[0].source and "### END SOLUTION" in solutions[0].source
    tests = [m for m in meta if m.get("grade")]
    assert tests and all(m["locked"] and m["points"] > 0 for m in tests)
    assert len({m["grade_id"] for m in meta if m}) == len([m for m in meta if m])  # unique ids
    assert (course / "nbgrader_config.py").is_file()


def test_autograde_and_export_match_kata_grade(course, tmp_path):
    nbgrader(course, "generate_assignment", "attention", "--force")
    release = course / "release/attention/attention.ipynb"
    assert "raise NotImplementedError()" in release.read_text() and "BEGIN SOLUTION" not in release.read_text()
    submissions = tmp_path / "submissions"
    for sid, source in STUDENTS.items():
        code = source.read_text()
        fill_in(release, code, course / "submitted" / sid / "attention" / "attention.ipynb")
        (submissions / sid / "attention").mkdir(parents=True)
        shutil.copy(source, submissions / sid / "attention" / "attention.py")
    nbgrader(course, "autograde", "attention", "--create")
    nbgrader(course, "export")
    with (course / "grades.csv").open() as f:
        exported = {r["student_id"]: (float(r["score"]), float(r["max_score"])) for r in csv.DictReader(f)}

    proc = run_kata("grade", str(submissions), "--out", str(tmp_path / "gradebook"), "--topics", "attention", timeout=900)
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "gradebook/grades.csv").open() as f:
        graded = {r["student"]: (float(r["score"]), float(r["max_score"])) for r in csv.DictReader(f)}
    assert exported == graded
    assert exported["alice"][0] == exported["alice"][1] > exported["bob"][0] > 0
