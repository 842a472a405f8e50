"""The known-mistake diagnosis (kata.mistakes) and its data (graders/fingerprints/, made by
`make fingerprints`, tests/fingerprints.py)."""

from __future__ import annotations

import json

import pytest

from kata import course, mistakes
from tests import fingerprints
from tests.grading import ROOT, grade, submission

TOPICS = course.topic_names()


def results(fails: dict, universe: set, verdict_elsewhere: str = "passed") -> list[dict]:
    """A grading's checks: `fails` as given, every other check of the universe `verdict_elsewhere`."""
    return [{"name": n, "verdict": v} for n, v in fails.items()] + [{"name": n, "verdict": verdict_elsewhere} for n in universe - fails.keys()]


@pytest.mark.parametrize("topic", TOPICS)
def test_fingerprints_are_made_from_the_current_mutants_and_grader(topic):
    path = mistakes.path_for(topic)
    assert path.is_file(), f"no {path.relative_to(ROOT)}: run `make fingerprints`"
    data = json.loads(path.read_text())
    assert data["made_from"] == fingerprints.sources(course.get(topic)), (
        f"{path.relative_to(ROOT)} was made from another grader, solution or set of mutants: run `make fingerprints topics={topic}`"
    )
    for name, entry in data["mistakes"].items():
        fresh = fingerprints.mistake_of(ROOT / entry["source"])
        assert {k: entry.get(k) for k in fresh} == fresh, f"{name}'s header changed: run `make fingerprints topics={topic}`"


@pytest.mark.parametrize("topic", TOPICS)
def test_the_readme_lists_the_mutants(topic):
    readme = (course.EXERCISES / topic / "README.md").read_text()
    assert fingerprints.common_mistakes(course.get(topic)) in readme, f"exercises/{topic}/README.md: run `make fingerprints topics={topic}`"


@pytest.mark.parametrize("topic", TOPICS)
def test_every_mutant_is_named_by_its_own_failures(topic):
    """With every fingerprint known, each mutant's failures name it, among at most
    MAX_SHOWN equally good matches; mutants the graders cannot tell apart are named
    together (tests/fingerprints.py --evaluate lists them: each such group is grader work
    left, a check that separates them)."""
    found, universe = mistakes.load(topic)
    problems = []
    for m in found:
        shown = mistakes.diagnose(results(m.fails, universe), found, universe)
        if not any(v in mistakes.SIGNAL for v in m.fails.values()):
            assert shown == [], f"{m.name} fails only by crashing, yet is diagnosed"
            continue
        twins = sorted(o.name for o in found if o.signature() == m.signature())
        names = sorted(d.mistake.name for d in shown)
        if m.name not in names or (len(twins) <= mistakes.MAX_SHOWN and names != twins):
            problems.append(f"{m.name}: named {names or 'nothing'}, fails exactly as {twins}")
    assert not problems, "\n".join(problems)


def test_no_diagnosis_without_a_value_signal():
    found, universe = mistakes.load("attention")
    assert mistakes.diagnose(results({}, universe, "not started"), found, universe) == []  # the stub
    assert mistakes.diagnose(results({}, universe), found, universe) == []  # a solution
    crashed = {name: "crashed" for name in sorted(universe)[:10]}
    assert mistakes.diagnose(results(crashed, universe), found, universe) == []
    timed = {name: "timed out" for name in sorted(universe)}
    assert mistakes.diagnose(results(timed, universe), found, universe) == []


def test_a_failure_set_far_from_every_mutant_is_not_diagnosed():
    found, universe = mistakes.load("attention")
    everything = {name: "wrong" for name in universe}
    assert mistakes.diagnose(results(everything, universe), found, universe) == []


def test_only_the_checks_that_ran_are_compared():
    """A learner who has written causal_mask only: its failures match a causal_mask mistake
    although that mutant also fails checks of functions still NOT STARTED here."""
    found, universe = mistakes.load("attention")
    top_left = next(m for m in found if m.name == "causal_mask_top_left")
    mine = {n: v for n, v in top_left.fails.items() if n.startswith("test_causal_mask")}
    ran = {n for n in universe if n.startswith("test_causal_mask")}
    checks = results(mine, ran) + [{"name": n, "verdict": "not started"} for n in universe - ran]
    assert "causal_mask_top_left" in [d.mistake.name for d in mistakes.diagnose(checks, found, universe)]


def test_make_check_names_the_mistake(tmp_path):
    graded = grade("attention", submission("attention", ROOT / "tests/mutants/attention/no_scaling.py", tmp_path), tmp_path)
    line = next(m for m in mistakes.load("attention")[0] if m.name == "no_scaling").line
    assert f"Looks like a known mistake: no_scaling: {line}" in graded.stdout
    assert "make hint topic=attention n=" in graded.stdout


def test_make_check_of_the_stub_names_nothing(tmp_path):
    graded = grade("attention", course.EXERCISES, tmp_path)
    assert graded.returncode == 1 and "Looks like a known mistake" not in graded.stdout


def test_the_threshold_separates_every_two_mistakes_the_graders_tell_apart():
    """The calibration the README reports: leave-one-out at THRESHOLD names a wrong mistake
    only where the graders cannot tell the two apart (the same failures exactly)."""
    wrong = {t: fingerprints.leave_one_out(t, mistakes.THRESHOLD)["wrong_but_distinguishable"] for t in TOPICS}
    assert not any(wrong.values()), wrong
