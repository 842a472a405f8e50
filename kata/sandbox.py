"""Confinement of an executor, applied in the forked (or spawned) child before the learner's
module loads: its folder and environment, resource limits, and a guard on writes and new
processes. Options come from the judge (kata.grade passes them for class grading)."""

from __future__ import annotations

import json
import os
import resource
import sys

OPTIONS_ENV = "KATA_SANDBOX"


def options_from_env() -> dict:
    """The confinement a grading asks for, set by kata.grade in the judge's environment."""
    try:
        return json.loads(os.environ.get(OPTIONS_ENV, "") or "{}")
    except ValueError:
        return {}


def enter(options: dict) -> None:
    if options.get("cwd"):
        os.chdir(options["cwd"])
    for name, value in (options.get("env") or {}).items():
        os.environ[name] = value
    memory_mb = options.get("memory_mb")
    if memory_mb:
        limit = int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if options.get("writable") is not None:
        guard_writes(options["writable"])


def guard_writes(writable: list[str]) -> None:
    """Refuse, through an audit hook (PEP 578, which Python code cannot remove), every file
    opened for writing outside the `writable` folders and /dev, and every new process.
    Native code (ctypes, an extension) is not seen by it."""
    roots = [os.path.realpath(w) for w in writable]
    allowed = tuple(r + os.sep for r in roots) + ("/dev/",)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            _, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & write_flags)
            path = os.path.realpath(os.fsdecode(args[0]))
            if writing and path not in roots and not path.startswith(allowed):  # a folder itself: O_TMPFILE
                raise PermissionError(f"grading forbids writing files: {os.fsdecode(args[0])}")
        elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork"):
            raise PermissionError("grading forbids starting processes")

    sys.addaudithook(hook)
