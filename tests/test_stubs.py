"""Stubs are generated from the solutions and committed; they must stay in step."""

from __future__ import annotations

import pytest

from kata import stubs

SOLUTION = '''"""Doc."""
import torch


def f(x):
    """Doc of f."""
    # BEGIN SOLUTION
    return x + 1
    # END SOLUTION


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        # BEGIN SOLUTION
        self.w = 1
        # END SOLUTION

    def forward(self, x):
        # BEGIN SOLUTION
        return x
        # END SOLUTION
'''


def test_committed_stubs_are_in_step_with_the_solutions():
    assert stubs.drifted() == [], "run `make stubs` and commit the result"


def test_regions_become_named_not_implemented_errors():
    out = stubs.make_stub(SOLUTION, "demo")
    assert 'raise NotImplementedError("demo.f")' in out
    assert '        raise NotImplementedError("demo.M.__init__")' in out
    assert 'raise NotImplementedError("demo.M.forward")' in out
    assert "super().__init__()" in out and '"""Doc of f."""' in out
    assert "BEGIN SOLUTION" not in out and "return x + 1" not in out


@pytest.mark.parametrize(
    "broken, complaint",
    [
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
        ("def f():\n    return 1\n    # END SOLUTION\n", "without BEGIN"),
        ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n", "inside the region"),
        ("def f():\n    return 1\n", "no BEGIN SOLUTION region"),
    ],
)
def test_malformed_markers_are_refused(broken, complaint):
    with pytest.raises(stubs.MarkerError, match=complaint):
        stubs.make_stub(broken, "demo")


def test_regenerating_backs_up_a_learners_file(tmp_path, monkeypatch):
    exercises, solutions = tmp_path / "exercises", tmp_path / "solutions"
    for topic in stubs.course.topic_names():  # a fake course: every topic has the demo solution
        (solutions / topic).mkdir(parents=True)
        (solutions / topic / f"{topic}.py").write_text(SOLUTION)
        (exercises / topic).mkdir(parents=True)
        (exercises / topic / f"{topic}.py").write_text(stubs.make_stub(SOLUTION, topic))
    learner = exercises / "attention" / "attention.py"
    learner.write_text("my precious work\n")
    monkeypatch.setattr(stubs.course, "EXERCISES", exercises)
    monkeypatch.setattr(stubs.course, "SOLUTIONS", solutions)
    monkeypatch.setattr(stubs.course, "ROOT", tmp_path)
    monkeypatch.setattr(stubs, "BACKUPS", tmp_path / ".kata" / "backups")

    messages = stubs.write_stubs()

    backups = list((tmp_path / ".kata" / "backups" / "attention").iterdir())
    assert [b.read_text() for b in backups] == ["my precious work\n"]
    assert learner.read_text() == stubs.make_stub(SOLUTION, "attention")
    assert any("backed up" in m for m in messages)
    assert stubs.write_stubs() == []  # nothing to do the second time, and no second backup


def test_regenerating_named_topics_touches_no_other(tmp_path, monkeypatch):
    """`make stubs topics=a`: only a's stub is written; another topic's file, even one that
    differs from its stub (a learner's work, or a topic being written), is left alone."""
    exercises, solutions = tmp_path / "exercises", tmp_path / "solutions"
    for topic in ("attention", "sampling"):
        (solutions / topic).mkdir(parents=True)
        (solutions / topic / f"{topic}.py").write_text(SOLUTION)
        (exercises / topic).mkdir(parents=True)
        (exercises / topic / f"{topic}.py").write_text("old\n")
    monkeypatch.setattr(stubs.course, "EXERCISES", exercises)
    monkeypatch.setattr(stubs.course, "SOLUTIONS", solutions)
    monkeypatch.setattr(stubs.course, "ROOT", tmp_path)
    monkeypatch.setattr(stubs, "BACKUPS", tmp_path / ".kata" / "backups")

    stubs.write_stubs(["attention"])

    assert (exercises / "attention" / "attention.py").read_text() == stubs.make_stub(SOLUTION, "attention")
    assert (exercises / "sampling" / "sampling.py").read_text() == "old\n"
