"""Every grader is graded (DESIGN.md contract 6): it passes the solution, reports the stub
as not started, rejects every known-bad implementation and accepts every alternative
correct one. The solution and the stub are graded by `python -m kata check` in a fresh
process, as a learner does; mutants and variants by the same grader run in-process."""

from __future__ import annotations

import ast
import json
import re

import pytest

from kata import course, learner, mistakes
from kata.checks import pick_device
from tests.grading import DEVICE, ROOT, StaleMutant, caught_by, examples, grade, grade_in_process, mutant_source, submission

TOPICS = course.topic_names()
MUTANTS = examples("mutants")
VARIANTS = examples("variants")


def ids(cases):
    return [f"{topic}/{path.stem}" for topic, path in cases]


@pytest.mark.parametrize("topic", TOPICS)
def test_solution_passes_every_check(topic, tmp_path):
    graded = grade(topic, "solutions", tmp_path)
    assert graded.checks, f"the {topic} grader ran no checks:\n{graded.stdout}{graded.stderr}"
    assert graded.returncode == 0 and not graded.failing(), graded.explain()


@pytest.mark.parametrize("topic", TOPICS)
def test_stub_is_reported_not_started(topic, tmp_path):
    graded = grade(topic, "exercises", tmp_path)
    assert graded.returncode == 1
    assert graded.checks
    wrong = {n: v for n, v in graded.verdicts().items() if v != "not started"}
    assert not wrong, f"stub checks not reported as not started: {wrong}"
    # One line per check, then the summary: no tracebacks for a learner who has not begun.
    lines = graded.stdout.strip().splitlines()
    assert len(lines) == len(graded.checks) + 2, graded.stdout
    assert "Traceback" not in graded.stdout + graded.stderr
    assert lines[-1] == f"0 of {len(graded.checks)} checks pass ({len(graded.checks)} not started)"


@pytest.mark.parametrize("topic", TOPICS)
def test_topic_has_every_part(topic):
    t = course.get(topic)
    for part in (t.file_in(course.SOLUTIONS), t.file_in(course.EXERCISES), t.grader, course.EXERCISES / topic / "README.md"):
        assert part.is_file(), f"topic {topic} has no {part.relative_to(ROOT)}"
    assert any(t == topic for t, _ in MUTANTS), f"no tests/mutants/{topic}/*.py or *.diff"
    assert any(t == topic for t, _ in VARIANTS), f"no tests/variants/{topic}/*.py"
    assert len(learner.hints(t)) >= 3, f"exercises/{topic}/README.md needs '### Hint N' sections under '## Hints' (make hint)"


@pytest.mark.parametrize("topic", TOPICS)
def test_every_check_has_a_mutant(topic):
    """A check that no known-bad implementation needs may be unable to fail: each grader
    check must be named in the caught-by line of at least one mutant."""
    checks = set(re.findall(r"^def (test_\w+)\(", course.get(topic).grader.read_text(), re.MULTILINE))
    named = {name for t, path in MUTANTS if t == topic for name in caught_by(path)}
    assert checks, f"graders/test_{topic}.py has no checks"
    assert not checks - named, f"checks no mutant of {topic} names in caught-by: {sorted(checks - named)}"


@pytest.mark.parametrize(("topic", "path"), MUTANTS, ids=ids(MUTANTS))
def test_mutant_is_caught(topic, path, tmp_path, pytester):
    expected = caught_by(path)
    assert expected, f"{path.relative_to(ROOT)} must name the checks that catch it (caught-by: ...)"
    # Only the named checks run: the question is whether they, specifically, catch it.
    graded = grade_in_process(pytester, topic, submission(topic, path, tmp_path), only=expected)
    assert graded.returncode == 1, f"{path.name} passed every check:\n{graded.stdout}"
    names = {c["name"].split("[")[0] for c in graded.checks}
    for check in expected:
        assert check in names, f"caught-by names {check}, which the {topic} grader does not have"
        caught = [
            c for c in graded.failing() if c["name"].split("[")[0] == check and c["verdict"] != "not started"
        ]
        assert caught, f"{check} let {path.name} through:\n{graded.explain()}"
    # The same grading is also a behavioural check of the committed fingerprint, on these
    # checks: a change to the engine that changes verdicts shows here. (Fingerprints are
    # made on the CPU; a GPU's low-precision kernels may fail other cases.)
    if pick_device(DEVICE).type != "cpu":
        return
    fingerprint = json.loads(mistakes.path_for(topic).read_text())["mistakes"].get(path.stem)
    assert fingerprint is not None, f"no fingerprint for {path.name}: run `make fingerprints topics={topic}`"
    for c in graded.checks:
        if c["verdict"] not in mistakes.TIMING:
            recorded = fingerprint["fails"].get(c["name"], "passed")
            assert recorded == c["verdict"] or (recorded == "passed" and c["verdict"] in mistakes.SILENT), (
                f"{c['name']}: {c['verdict']} now, {recorded} in graders/fingerprints/{topic}.json: run `make fingerprints topics={topic}`"
            )


@pytest.mark.parametrize(("topic", "path"), VARIANTS, ids=ids(VARIANTS))
def test_variant_passes_every_check(topic, path, tmp_path, pytester):
    graded = grade_in_process(pytester, topic, submission(topic, path, tmp_path))
    assert graded.checks
    assert graded.returncode == 0 and not graded.failing(), graded.explain()


DIFF_MUTANTS = [(t, p) for t, p in MUTANTS if p.suffix == ".diff"]


@pytest.mark.parametrize(("topic", "path"), DIFF_MUTANTS, ids=ids(DIFF_MUTANTS))
def test_diff_mutant_still_applies_to_the_solution(topic, path):
    """A .diff mutant is an edit of the reference solution: each hunk must still be found
    once, and the result must be a Python module whose docstring names the mistake."""
    source = mutant_source(path)
    assert ast.get_docstring(ast.parse(source)).startswith("Mistake:")
    assert "# MISTAKE" in source, f"{path.name}: mark the planted mistake with a '# MISTAKE:' comment"


def test_a_stale_diff_mutant_fails_loudly(tmp_path, monkeypatch):
    folder = tmp_path / "mutants" / "attention"
    folder.mkdir(parents=True)
    stale = folder / "stale.diff"
    stale.write_text("Mistake: x.\n\ncaught-by: test_matches_torch\n\n--- a\n+++ b\n@@ -1 +1 @@\n-this line is in no solution\n+x\n")
    monkeypatch.setattr("tests.grading.ROOT", tmp_path)
    with pytest.raises(StaleMutant, match="occurs 0 times"):
        mutant_source(stale)


def test_random_work_gets_the_same_verdict_every_run(tmp_path, pytester):
    """Every check starts from the same random seed (kata.plugin), so a submission whose
    work is random gets the same message, counts included, on every run."""
    path = ROOT / "tests" / "mutants" / "normalization" / "rms_norm_draws_an_init_every_call.diff"
    folder = submission("normalization", path, tmp_path)
    runs = [grade_in_process(pytester, "normalization", folder, only=["test_no_loop_over_rows"]) for _ in range(2)]
    messages = [[c["message"] for c in graded.failing()] for graded in runs]
    assert messages[0] and messages[0] == messages[1]
