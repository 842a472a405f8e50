"""`make bench`: how long a learner's check takes for each topic, next to the cost of
importing torch, and the speed ratios each grader measures (learner / reference, same process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from kata import course

ROUNDS = 3
TOPICS = course.topic_names()


def run(*cmd: str) -> None:
    subprocess.run(cmd, cwd=course.ROOT, check=True, capture_output=True)


def test_import_torch(benchmark):
    benchmark.group = "command wall time"
    benchmark.pedantic(run, args=(sys.executable, "-c", "import torch"), rounds=ROUNDS, iterations=1)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("topic", TOPICS)
def test_make_check_solutions(benchmark, topic):
    benchmark.group = "command wall time"
    benchmark.extra_info["command"] = f"make check topic={topic} impl=solutions"
    benchmark.pedantic(run, args=("make", "check", f"topic={topic}", "impl=solutions"), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("topic", TOPICS)
def test_grader_speed_ratios(topic, tmp_path, record_property):
    """One graded run of the solution; the ratios are printed in the summary below."""
    out = tmp_path / "results.json"
    run(sys.executable, "-m", "kata", "check", topic, "--impl", "solutions", "--json", str(out))
    for check in json.loads(out.read_text())["checks"]:
        for figure in ("speed_ratio", "speedup"):  # learner / reference; cached over uncached (kv_cache)
            if figure in check["properties"]:
                record_property(f"{topic}::{check['name']} {figure}", check["properties"][figure])
