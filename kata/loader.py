"""Load a topic's implementation by file path into a fresh module.

Loading by path (never by package import) makes exercises/, solutions/ and any
student's folder interchangeable, and a submission cannot shadow the graders or
the engine: nothing of it is put on sys.path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from kata.course import EXERCISES, SOLUTIONS


class MissingTopicFile(FileNotFoundError):
    """The implementation folder has no file for this topic."""


class LoadError(ImportError):
    """The learner's file exists but raised while being imported (syntax error, bad import...)."""


def resolve_impl(impl: str | Path) -> Path:
    """'exercises', 'solutions' or a path to a folder shaped like exercises/."""
    if str(impl) == "exercises":
        return EXERCISES
    if str(impl) == "solutions":
        return SOLUTIONS
    return Path(impl).expanduser().resolve()


def short_traceback(exc: BaseException, files: Path | Iterable[Path]) -> str:
    """The frames of `exc` inside the learner's `files`, plus the error line.

    Frames in torch, the engine or the grader are left out: the learner can act
    only on their own lines.
    """
    files = {Path(f).resolve() for f in ([files] if isinstance(files, Path) else files)}
    lines = []
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() in files:
            lines.append(f"  {Path(frame.filename).name}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}")
    if isinstance(exc, SyntaxError) and exc.filename:
        lines.append(f"  {Path(exc.filename).name}:{exc.lineno}: {(exc.text or '').strip()}")
    lines.append(f"  {type(exc).__name__}: {exc}")
    return "\n".join(lines)


def load_module(path: Path) -> ModuleType:
    """Execute the file at `path` as a new module with a name unique to that path."""
    path = path.resolve()
    if not path.is_file():
        raise MissingTopicFile(f"no file {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"kata_impl_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered so dataclasses, pickling and inspect can find the module; removed on failure.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise LoadError(f"{path} could not be loaded:\n{short_traceback(exc, path)}") from exc
    return module
