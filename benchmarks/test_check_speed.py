"""`make bench`: how long a learner's check takes, next to the cost of importing torch,
and the speed ratios the attention grader measures (learner / reference, same process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from kata import course

ROUNDS = 3


def run(*cmd: str) -> None:
    subprocess.run(cmd, cwd=course.ROOT, check=True, capture_output=True)


def test_import_torch(benchmark):
    benchmark.group = "command wall time"
    benchmark.pedantic(run, args=(sys.executable, "-c", "import torch"), rounds=ROUNDS, iterations=1)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_check_attention_solutions(benchmark):
    benchmark.group = "command wall time"
    benchmark.pedantic(
        run, args=("make", "check", "topic=attention", "impl=solutions"), rounds=ROUNDS, iterations=1
    )


def test_grader_speed_ratios(tmp_path, record_property):
    """One graded run of the solution; the ratios are printed in the summary below."""
    out = tmp_path / "results.json"
    run(sys.executable, "-m", "kata", "check", "attention", "--impl", "solutions", "--json", str(out))
    for check in json.loads(out.read_text())["checks"]:
        if "speed_ratio" in check["properties"]:
            record_property(check["name"], check["properties"]["speed_ratio"])
