"""The verdict exceptions a check fails with; kata.plugin turns each into the one-line
verdict the learner sees (DESIGN.md, contract 2). Shared by the judge (kata.checks) and
the executor's harness (kata.harness), which raises RuleBroken."""


class Wrong(AssertionError):
    """The learner's code returned something other than what torch gives."""


class RuleBroken(AssertionError):
    """The learner's code called a forbidden op or modified an input."""


class TooSlow(AssertionError):
    """The learner's code is measurably slower than the kata allows."""
