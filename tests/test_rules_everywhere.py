"""Every call a grader makes into learner code runs under the kata's rules, whichever check
makes it (value, gradient, layout, op count, FLOPs, speed).

A rule enforced only by the value checks once let a submission that called
F.scaled_dot_product_attention be BROKE A RULE on every value check and pass the speed and
op-count checks. Here each topic's solution gets a call to a canary op at the start of every
region a learner writes, the canary is forbidden for the run, and every check of every topic
must then report that rule broken: a check that passes, or fails some other way, calls the
learner's code outside the rules.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from kata import course
from tests.grading import grade_in_process

# An op no solution uses, so the canary is the only way to reach it.
CANARY = "torch.special.bessel_j0(torch.zeros(1))  # the rules self-test's canary"
CANARY_PATTERN = "*bessel_j0*"


def canary_source(topic: str) -> str:
    """The topic's solution with the canary call opening every learner-written region."""
    source = course.get(topic).file_in(course.SOLUTIONS).read_text()
    assert "bessel_j0" not in source, f"{topic}'s solution uses the canary op: pick another"
    return re.sub(r"^([ \t]*)# BEGIN SOLUTION[ \t]*\n", lambda m: f"{m[0]}{m[1]}{CANARY}\n", source, flags=re.MULTILINE)


@pytest.mark.parametrize("topic", course.topic_names())
def test_every_check_calls_learner_code_under_the_rules(topic, tmp_path, pytester, monkeypatch):
    source = canary_source(topic)
    assert source.count(CANARY) == course.get(topic).file_in(course.SOLUTIONS).read_text().count("# BEGIN SOLUTION")
    folder = tmp_path / "submission"
    (folder / topic).mkdir(parents=True)
    (folder / topic / f"{topic}.py").write_text(source)

    real_get = course.get

    def get_with_canary(name: str) -> course.Topic:
        found = real_get(name)
        return dataclasses.replace(found, forbidden=(*found.forbidden, CANARY_PATTERN))

    # The grader module is imported afresh by the in-process run, and reads its rules then.
    monkeypatch.setattr(course, "get", get_with_canary)
    graded = grade_in_process(pytester, topic, folder)
    assert graded.checks, graded.stdout
    outside = {c["name"]: f"{c['verdict']}: {c['message'][:200]}" for c in graded.checks if c["verdict"] not in ("broke a rule", "skipped")}
    assert not outside, "checks that call learner code outside the rules:\n" + "\n".join(f"  {n}: {m}" for n, m in outside.items())
    assert all("bessel_j0" in c["message"] for c in graded.checks if c["verdict"] == "broke a rule")
