"""The course: topics in order, read from course.toml at the repository root."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COURSE_FILE = ROOT / "course.toml"
EXERCISES = ROOT / "exercises"
SOLUTIONS = ROOT / "solutions"
GRADERS = ROOT / "graders"


@dataclass(frozen=True)
class Topic:
    name: str
    level: int
    title: str
    timeout: float = 60
    forbidden: tuple[str, ...] = ()
    speed: dict[str, float] = field(default_factory=dict)
    # The least speed-up, per device type, that a check comparing two ways of doing the
    # same work must see (the kv_cache kata: cached over uncached generation).
    speedup: dict[str, float] = field(default_factory=dict)
    # Whether the learner's code may start worker processes (a data loader's, say) when
    # graded in the sandbox; they stay confined as it is and end with it (kata.sandbox).
    worker_processes: bool = False
    # Modules the warm zygote imports for this topic's gradings because torch imports them
    # only when first used, in every forked judge and executor again (kata.zygote).
    preload: tuple[str, ...] = ()

    @property
    def grader(self) -> Path:
        return GRADERS / f"test_{self.name}.py"

    def file_in(self, root: Path) -> Path:
        """Where this topic's module lives in a folder shaped like exercises/."""
        return root / self.name / f"{self.name}.py"


class UnknownTopic(LookupError):
    def __init__(self, name: str):
        valid = ", ".join(topic_names()) or "(none)"
        given = f"unknown topic '{name}'" if name else "no topic given"
        close = difflib.get_close_matches(name, topic_names(), n=1) if name else []
        if close:
            given += f" (did you mean '{close[0]}'?)"
        super().__init__(f"{given}. Valid topics: {valid}")


@cache
def topics() -> tuple[Topic, ...]:
    with COURSE_FILE.open("rb") as f:
        data = tomllib.load(f)
    out = []
    for entry in data.get("topic", []):
        entry = dict(entry)
        entry["forbidden"] = tuple(entry.get("forbidden", ()))
        entry["preload"] = tuple(entry.get("preload", ()))
        out.append(Topic(**entry))
    return tuple(out)


def topic_names() -> list[str]:
    return [t.name for t in topics()]


def get(name: str) -> Topic:
    for t in topics():
        if t.name == name:
            return t
    raise UnknownTopic(name)
