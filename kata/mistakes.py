"""Name the mistake a learner most likely made, from which checks their code fails.

Every mutant in tests/mutants/<topic>/ is a mistake learners make, with a name and a
one-line description. `make fingerprints` grades each one on every check of its topic and
records, per mutant, which checks it fails and how (graders/fingerprints/<topic>.json, made
by tests/fingerprints.py). After a grading, `diagnose` compares the learner's failures with
those fingerprints.

What is compared: the (check, verdict) pairs of the failing checks, over the checks the
learner's code actually ran (a check NOT STARTED because its function is still a stub says
nothing, so a fingerprint's entries for it are left out too). Verdicts that depend on time
(TOO SLOW, TIMED OUT) are left out on both sides: the same code can get either on a loaded
machine. The similarity is the Jaccard index of the two sets, 1.0 for the same failures.

A diagnosis is printed only when the match is good (THRESHOLD, calibrated by leave-one-out
over the mutant library: README, "Which mistake was it"), and never when the failures carry
no value signal: only NOT STARTED, or only crashes and errors (a NameError fails checks the
way a hundred mistakes would).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kata import course

FINGERPRINTS = course.GRADERS / "fingerprints"
# Verdicts a check can get by timing alone: no part of a fingerprint.
TIMING = frozenset({"too slow", "timed out"})
# Verdicts that say nothing about what the code computes.
SILENT = frozenset({"passed", "skipped", "not started", "missing"})
# Failures that name a behaviour (a value, a rule): at least one is needed for a diagnosis.
SIGNAL = frozenset({"wrong", "broke a rule"})
THRESHOLD = 0.96  # above every two distinct mistakes (0.955 at most): tests/fingerprints.py --evaluate, README
MAX_SHOWN = 3


@dataclass(frozen=True)
class Mistake:
    name: str
    line: str  # the mutant's Mistake line
    hints: tuple[int, ...]  # `make hint topic=T n=N` numbers
    fails: dict  # check name -> verdict, for every check the mutant fails

    def signature(self, ran: set[str] | None = None) -> frozenset[tuple[str, str]]:
        """What a diagnosis compares: its (check, verdict) failures, timing left out, over `ran`."""
        return frozenset(
            (name, verdict) for name, verdict in self.fails.items()
            if verdict not in TIMING and (ran is None or name in ran)
        )  # fmt: skip


@dataclass(frozen=True)
class Diagnosis:
    mistake: Mistake
    similarity: float


def path_for(topic: str) -> Path:
    return FINGERPRINTS / f"{topic}.json"


def load(topic: str) -> tuple[list[Mistake], set[str]]:
    """The topic's mistakes and the checks they were graded on; none where no file was made."""
    path = path_for(topic)
    if not path.is_file():
        return [], set()
    data = json.loads(path.read_text())
    mistakes = [
        Mistake(name, m["line"], tuple(m["hints"]), dict(m["fails"]))
        for name, m in data["mistakes"].items()
    ]
    return mistakes, set(data["checks"])


def failures(checks: list[dict], universe: set[str]) -> frozenset[tuple[str, str]]:
    """The comparable (check, verdict) pairs of a grading's results (kata.plugin's JSON checks)."""
    return frozenset(
        (c["name"], c["verdict"]) for c in checks
        if c["name"] in universe and c["verdict"] not in SILENT | TIMING
    )  # fmt: skip


def similarity(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def rank(checks: list[dict], mistakes: list[Mistake], universe: set[str]) -> list[Diagnosis]:
    """Every mistake with its similarity to these results, best first (ties by name)."""
    ran = {c["name"] for c in checks if c["verdict"] not in ("not started", "skipped", "missing")} & universe
    mine = failures(checks, universe)
    out = []
    for m in mistakes:
        out.append(Diagnosis(m, similarity(mine, m.signature(ran))))
    return sorted(out, key=lambda d: (-d.similarity, d.mistake.name))


def diagnose(checks: list[dict], mistakes: list[Mistake], universe: set[str], threshold: float = THRESHOLD) -> list[Diagnosis]:
    """The best-matching known mistakes (at most MAX_SHOWN, all equally good), or none."""
    mine = failures(checks, universe)
    if not any(verdict in SIGNAL for _, verdict in mine):
        return []  # stubs, crashes, timeouts: nothing that points at one mistake
    ranked = rank(checks, mistakes, universe)
    if not ranked or ranked[0].similarity < threshold:
        return []
    best = ranked[0].similarity
    return [d for d in ranked if d.similarity == best][:MAX_SHOWN]


def diagnose_topic(topic: str, checks: list[dict]) -> list[Diagnosis]:
    mistakes, universe = load(topic)
    return diagnose(checks, mistakes, universe)


def describe(topic: str, diagnoses: list[Diagnosis]) -> list[str]:
    """The lines `make check` prints after its summary."""
    lines = []
    for d in diagnoses:
        m = d.mistake
        lines.append(f"Looks like a known mistake: {m.name}: {m.line}")
        if m.hints:
            numbers = ", ".join(str(n) for n in m.hints)
            lines.append(f"  read hint {numbers}: make hint topic={topic} n={m.hints[0]}")
    return lines
