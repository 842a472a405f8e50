"""Grading a notebook's functions from inside the notebook (the nbgrader course's test cells).

    from kata.notebook import check
    check("attention", globals(), "test_matches_torch[3d]")

The first call for a topic grades every check of that topic once, in this process, on a
module made of the notebook's own functions and classes; each call then passes or raises
AssertionError with the check's verdict, which is what nbgrader scores a test cell by.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import types
from pathlib import Path

from kata import course

_results: dict[tuple, dict[str, dict]] = {}


def _module(topic: str, namespace: dict) -> types.ModuleType:
    module = types.ModuleType(f"notebook_{topic}")
    module.__dict__.update({k: v for k, v in namespace.items() if not k.startswith("_")})
    return module


def _fingerprint(topic: str, namespace: dict) -> tuple:
    """Changes when the notebook redefines any of its functions or classes."""
    return (topic, *sorted((k, id(v)) for k, v in namespace.items() if callable(v) and not k.startswith("_")))


def grade(topic: str, namespace: dict, device: str = "cpu") -> dict[str, dict]:
    """Every check of `topic` on the notebook's definitions: check name -> result."""
    import pytest

    from kata.engine import grader_args
    from kata.plugin import InMemoryImplementation

    key = _fingerprint(topic, namespace)
    if key not in _results:
        InMemoryImplementation.modules[topic] = _module(topic, namespace)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "results.json"
            args = grader_args(course.get(topic), "in-memory", device, f"--kata-json={out}", "-q", "-p", "no:xdist")
            with contextlib.redirect_stdout(io.StringIO()):  # the verdicts are the cells' output
                pytest.main(args)
            checks = json.loads(out.read_text())["checks"] if out.exists() else []
        _results[key] = {c["name"]: c for c in checks}
    return _results[key]


def check(topic: str, namespace: dict, name: str) -> None:
    """Pass, or raise AssertionError saying why the check `name` of `topic` fails."""
    result = grade(topic, namespace).get(name)
    if result is None:
        raise AssertionError(f"the {topic} grader did not run {name}: did the cells above run without errors?")
    if result["verdict"] not in ("passed", "skipped"):
        raise AssertionError(f"{result['verdict'].upper()}: {result['message']}")
    print(f"{result['verdict'].upper()}  {name}")
