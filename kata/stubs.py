"""Generate exercise stubs from the solutions (the single source).

Each region between `# BEGIN SOLUTION` and `# END SOLUTION` (nbgrader's markers)
becomes `raise NotImplementedError("<topic>.<function>")` at the marker's
indentation; everything outside the markers is kept as it is.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from kata import course

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?(?:def|class)\s+(?P<name>\w+)")
BACKUPS = course.ROOT / ".kata" / "backups"


class MarkerError(ValueError):
    pass


def _qualname(lines: list[str], index: int, indent: str) -> str:
    """The dotted name of the def/class enclosing line `index` (e.g. MultiHeadAttention.forward)."""
    names, depth = [], len(indent)
    for line in reversed(lines[:index]):
        m = DEF.match(line)
        if m and len(m["indent"]) < depth:
            names.append(m["name"])
            depth = len(m["indent"])
            if depth == 0:
                break
    return ".".join(reversed(names)) or "<module>"


def make_stub(source: str, topic: str, filename: str = "<solution>") -> str:
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    region_start = None
    for i, line in enumerate(lines, start=1):
        if region_start is None:
            m = BEGIN.match(line)
            if m:
                region_start = i
                name = _qualname(lines, i - 1, m["indent"])
                out.append(f'{m["indent"]}raise NotImplementedError("{topic}.{name}")\n')
            elif END.match(line):
                raise MarkerError(f"{filename}:{i}: END SOLUTION without BEGIN SOLUTION")
            else:
                out.append(line)
        elif BEGIN.match(line):
            raise MarkerError(f"{filename}:{i}: BEGIN SOLUTION inside the region opened at line {region_start}")
        elif END.match(line):
            region_start = None
    if region_start is not None:
        raise MarkerError(f"{filename}:{region_start}: BEGIN SOLUTION never closed")
    if not any(BEGIN.match(line) for line in lines):
        raise MarkerError(f"{filename}: no BEGIN SOLUTION region: nothing for the learner to write")
    return "".join(out)


def expected_stubs(names=None) -> dict[Path, str]:
    """The stub each solution generates: of every topic, or of the topics named."""
    stubs = {}
    for topic in course.topics():
        if names and topic.name not in names:
            continue
        solution = topic.file_in(course.SOLUTIONS)
        stubs[topic.file_in(course.EXERCISES)] = make_stub(solution.read_text(), topic.name, str(solution))
    return stubs


def drifted() -> list[Path]:
    """Committed stubs that differ from what the solutions generate."""
    return [p for p, text in expected_stubs().items() if not p.is_file() or p.read_text() != text]


def backup(path: Path, topic: str) -> Path:
    """Copy a learner's file to .kata/backups/<topic>/, under a timestamped name no other backup has."""
    folder = BACKUPS / topic
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = folder / f"{stamp}-{path.name}", 1
    while target.exists():  # two backups within a second keep both
        n += 1
        target = folder / f"{stamp}-{n}-{path.name}"
    shutil.copy2(path, target)
    return target


def write_stubs(names=None) -> list[str]:
    """Regenerate every stub (or those of the topics named). A file that differs from its
    new stub is backed up first: it may hold a learner's work."""
    messages = []
    for path, text in expected_stubs(names).items():
        if path.is_file() and path.read_text() == text:
            continue
        if path.is_file():
            saved = backup(path, path.parent.name)
            messages.append(f"backed up {path.relative_to(course.ROOT)} to {saved.relative_to(course.ROOT)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        messages.append(f"wrote {path.relative_to(course.ROOT)}")
    return messages
