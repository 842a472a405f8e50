"""The learner's front door: clear messages and exit codes for bad input, verdicts for bad code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from kata import course
from tests.grading import ROOT, grade, mutant_source, run_kata, submission, warm_env


def test_unknown_topic_names_the_valid_ones():
    proc = run_kata("check", "atention")
    assert proc.returncode == 2
    valid = ", ".join(course.topic_names())
    assert proc.stderr.strip() == f"kata: unknown topic 'atention' (did you mean 'attention'?). Valid topics: {valid}"


def test_no_topic_names_the_valid_ones():
    proc = run_kata("check")
    assert proc.returncode == 2
    assert f"no topic given. Valid topics: {', '.join(course.topic_names())}" in proc.stderr


def test_missing_folder_is_one_clear_line(tmp_path):
    proc = run_kata("check", "attention", "--impl", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no folder" in proc.stderr


def test_folder_without_the_topic_file(tmp_path):
    proc = run_kata("check", "attention", "--impl", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"kata: no attention/attention.py in {tmp_path}: a submission holds <topic>/<topic>.py"


def test_unavailable_device_is_a_usage_error():
    proc = run_kata("check", "attention", "--device", "tpu")
    assert proc.returncode == 2
    assert "unknown device 'tpu'" in proc.stderr


def test_file_that_does_not_load_is_reported_once_per_run(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\ndef causal_mask(t_q, t_k=None, *, device=None)\n    return None\n")
    graded = grade("attention", submission("attention", broken, tmp_path), tmp_path)
    assert graded.returncode == 1
    assert graded.checks == [], "no check runs on a file that does not load"
    lines = graded.stdout.strip().splitlines()
    assert lines[1].startswith("ERROR") and "could not be loaded" in graded.stdout, graded.stdout
    assert sum(line.startswith(("ERROR", "PASS", "WRONG", "CRASHED")) for line in lines) == 1, graded.stdout
    assert graded.stdout.count("SyntaxError") == 1, graded.stdout
    assert "broken.py" not in graded.stdout and "attention.py:3" in graded.stdout
    summary = re.fullmatch(r"0 of (\d+) checks pass \((\d+) not run: the file could not be loaded\)", lines[-1])
    assert summary and summary[1] == summary[2] != "0", lines[-1]


@pytest.mark.parametrize(
    "source, cause",
    [
        ("import sys\nsys.exit(0)\n", "it called sys.exit(0) while being imported"),
        ("import os\nos._exit(3)\n", "ended while importing it (it exited with status 3"),
        ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
        ("while True:\n    pass\n", "did not finish loading within 2 s"),
    ],
    ids=["sys_exit", "os_exit", "exception", "endless_loop"],
)
def test_a_file_that_cannot_be_imported_is_one_error_naming_the_cause(tmp_path, source, cause):
    path = tmp_path / "bad.py"
    path.write_text(source)
    proc = run_kata("check", "attention", "--impl", str(submission("attention", path, tmp_path)), "--timeout", "2")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 1
    assert lines[1].startswith("ERROR") and cause in proc.stdout, proc.stdout
    assert sum(line.startswith(("ERROR", "PASS", "WRONG", "CRASHED")) for line in lines) == 1, proc.stdout
    assert lines[-1].endswith("not run: the file could not be loaded)")


def test_crash_shows_the_learners_line_not_torchs(tmp_path):
    source = tmp_path / "crashy.py"
    solution = (ROOT / "solutions/attention/attention.py").read_text()
    source.write_text(solution.replace("scores = (q @ k.transpose(-2, -1)) * scale", "scores = (q @ k) * scale"))
    graded = grade("attention", submission("attention", source, tmp_path), tmp_path, only=["test_matches_torch"])
    crashed = [c for c in graded.checks if c["verdict"] == "crashed"]
    assert crashed, graded.explain()
    message = crashed[0]["message"]
    assert "attention.py:" in message and "scores = (q @ k) * scale" in message
    assert "site-packages" not in message and "torch/" not in message



def test_a_hanging_check_times_out_and_the_rest_still_run(tmp_path):
    source = tmp_path / "hangs.py"
    solution = (ROOT / "solutions/attention/attention.py").read_text()
    source.write_text(solution.replace('    if t_k < t_q:\n', '    while t_k < t_q:\n        pass\n    if t_k < t_q:\n'))
    out = tmp_path / "results.json"
    proc = run_kata(
        "check", "attention", "--impl", str(submission("attention", source, tmp_path)), "--json", str(out),
        "--timeout", "2", "--only", "test_causal_mask_rejects_fewer_keys_than_queries,test_causal_mask_square",
    )  # fmt: skip
    verdicts = {c["name"]: c["verdict"] for c in json.loads(out.read_text())["checks"]}
    assert proc.returncode == 1
    assert verdicts.pop("test_causal_mask_rejects_fewer_keys_than_queries") == "timed out"
    assert set(verdicts.values()) == {"passed"}
    assert "TIMED OUT    test_causal_mask_rejects_fewer_keys_than_queries: no result within the per-check limit of 2s" in proc.stdout


def test_other_verbs_refuse_bad_input_in_one_line(tmp_path):
    cases = [
        (("grade", str(tmp_path / "nope")), "no folder"),
        (("grade", str(tmp_path), "--topics", "atention"), "did you mean 'attention'"),
        (("grade-one", str(tmp_path), "--results", str(tmp_path / "r.json"), "--device", "tpu"), "unknown device 'tpu'"),
        (("hint", "atention"), "did you mean 'attention'"),
        (("reset",), "no topic given"),
        (("nbgrader", "--topics", "nope"), "unknown topic 'nope'"),
        (("stubs", "--topics", "atention"), "did you mean 'attention'"),
    ]
    for args, message in cases:
        proc = run_kata(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "r.json").exists()


def test_a_cold_check_starts_its_own_zygote(tmp_path):
    """The learner's first `make check`: no warm process anywhere, the front door starts one."""
    out = tmp_path / "r.json"
    proc = run_kata("check", "attention", "--impl", "solutions", "--only", "test_causal_mask_square", "--json", str(out), cold=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text())["passed"] == 3


def test_without_fork_processes_are_spawned_with_the_same_verdicts(tmp_path):
    """Where fork is unavailable (Windows) executors start as fresh interpreters: slower, same verdicts."""
    source = tmp_path / "mutant.py"
    source.write_text(mutant_source(ROOT / "tests/mutants/attention/causal_mask_top_left.py"))
    impl = str(submission("attention", source, tmp_path))
    only = "test_causal_mask_square,test_causal_mask_is_bottom_right,test_mha_layout"
    verdicts = []
    for spawn in (False, True):
        out = tmp_path / f"r{spawn}.json"
        env = {**(os.environ if spawn else warm_env()), **({"KATA_EXECUTOR": "spawn"} if spawn else {})}
        proc = subprocess.run([sys.executable, "-m", "kata", "check", "attention", "--impl", impl, "--only", only, "--json", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        verdicts.append({c["name"]: (c["verdict"], c["message"]) for c in json.loads(out.read_text())["checks"]})
    assert verdicts[0] == verdicts[1] and "wrong" in {v for v, _ in verdicts[0].values()}
