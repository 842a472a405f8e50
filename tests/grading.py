"""Helpers for the self-tests: grade an implementation exactly as a learner's `make check` does."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kata import course

ROOT = course.ROOT
TESTS = Path(__file__).resolve().parent
# The device the self-tests grade on: auto (cuda, then mps, then cpu) unless told otherwise.
DEVICE = os.environ.get("KATA_TEST_DEVICE", "auto")


@dataclass
class Graded:
    returncode: int
    stdout: str
    stderr: str
    checks: list[dict]

    def verdicts(self) -> dict[str, str]:
        return {c["name"]: c["verdict"] for c in self.checks}

    def failing(self) -> list[dict]:
        return [c for c in self.checks if c["verdict"] not in ("passed", "skipped")]

    def explain(self) -> str:
        return "\n".join(f"{c['verdict']:>13}  {c['name']}: {c['message']}" for c in self.failing()) or self.stdout


def warm_env() -> dict:
    """This process's environment with its zygote's address (KATA_ZYGOTE), so that a `kata`
    subprocess forks its executors from the warm zygote of this test worker instead of
    importing torch once more: the learner's path all the same, without that second's cost.
    Only for subprocesses of this checkout (the zygote runs its code). One test, in
    test_cli, keeps the fully cold path."""
    from kata import zygote

    zygote.start()
    zygote.ready()
    return {**os.environ, zygote.ADDRESS_ENV: zygote.address()} if zygote.address() else dict(os.environ)


def run_kata(*args: str, timeout: float = 300, cold: bool = False) -> subprocess.CompletedProcess:
    env = None if cold else warm_env()
    return subprocess.run(
        [sys.executable, "-m", "kata", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def grade(topic: str, impl: str | Path, tmp_path: Path, only: list[str] = ()) -> Graded:
    out = tmp_path / "results.json"
    proc = run_kata("check", topic, "--impl", str(impl), "--device", DEVICE, "--json", str(out), "--only", ",".join(only))
    checks = json.loads(out.read_text())["checks"] if out.exists() else []
    return Graded(proc.returncode, proc.stdout, proc.stderr, checks)


def grade_in_process(pytester, topic: str, impl: Path, only: list[str] = ()) -> Graded:
    """The same grader run inside this process with pytest's own pytester, saving the
    ~2 s start-up of a fresh interpreter and torch import per graded file. Used for
    mutants and variants, which test the grader's logic; the learner's own path, a
    fresh `python -m kata check`, is exercised by the solution, stub and CLI tests."""
    from kata.engine import grader_args

    out = pytester.path / "results.json"
    args = grader_args(course.get(topic), str(impl), DEVICE, f"--kata-json={out}", "-p", "no:xdist", only=only)
    result = pytester.runpytest_inprocess(*args)
    checks = json.loads(out.read_text())["checks"] if out.exists() else []
    return Graded(int(result.ret), str(result.stdout), str(result.stderr), checks)


def submission(topic: str, source: Path, tmp_path: Path) -> Path:
    """A folder shaped like exercises/ holding `source` (a file, or a .diff mutant) as the topic's file."""
    folder = tmp_path / "submission"
    (folder / topic).mkdir(parents=True)
    (folder / topic / f"{topic}.py").write_text(mutant_source(source))
    return folder


def load_grader(topic: str):
    """A topic's grader module, loaded by path (graders/ is not a package), for self-tests
    of its reference and input helpers."""
    from kata.loader import load_module

    return load_module(course.get(topic).grader)


def caught_by(path: Path) -> list[str]:
    """The grader checks a mutant names in its docstring's `caught-by:` line."""
    m = re.search(r"^caught-by:\s*(.+)$", path.read_text(), re.MULTILINE)
    return [name.strip() for name in m.group(1).split(",")] if m else []


def mistake_line(path: Path) -> str:
    """The one line a mutant's docstring starts with, without its `Mistake:` label."""
    m = re.search(r"^(?:\"\"\")?Mistake:\s*(.+)$", path.read_text(), re.MULTILINE)
    return m.group(1).strip() if m else ""


def hint_numbers(path: Path) -> list[int]:
    """The `make hint` numbers a mutant's `hint:` line names (none for `hint: none`)."""
    m = re.search(r"^hint:\s*(.+)$", path.read_text(), re.MULTILINE)
    return [int(n) for n in re.findall(r"\d+", m.group(1))] if m else []


def examples(kind: str) -> list[tuple[str, Path]]:
    """(topic, file) for every file under tests/<kind>/<topic>/."""
    return [(t.name, p) for t in course.topics() for p in sorted((TESTS / kind / t.name).glob("*.*")) if p.suffix in (".py", ".diff")]


# ---------------------------------------------------------------- mutants written as edits


class StaleMutant(AssertionError):
    """A mutant's edit no longer matches the solution it is made from."""


def _hunks(diff: str) -> list[tuple[str, str]]:
    """(old, new) text of each hunk of a unified diff: '-' and ' ' lines make the old
    text, '+' and ' ' lines the new one. Line numbers are ignored: hunks are found by text."""
    hunks, old, new = [], None, None
    for line in diff.splitlines(keepends=True):
        if line.startswith("@@"):
            if old is not None:
                hunks.append(("".join(old), "".join(new)))
            old, new = [], []
        elif old is None or line.startswith(("--- ", "+++ ")):
            continue
        elif line.startswith("-"):
            old.append(line[1:])
        elif line.startswith("+"):
            new.append(line[1:])
        else:  # context; an empty context line may have lost its leading space
            old.append(line[1:] if line.startswith(" ") else line)
            new.append(line[1:] if line.startswith(" ") else line)
    if old is not None:
        hunks.append(("".join(old), "".join(new)))
    return hunks


def mutant_source(path: Path) -> str:
    """A mutant as the learner file it models. A .py mutant is that file. A .diff mutant
    is the text before its diff (the mistake and caught-by lines, which become the module
    docstring) and a unified diff against the topic's reference solution, marker lines
    removed: each hunk's text must occur exactly once, so a solution that changes under a
    mutant makes it fail loudly instead of silently testing old code."""
    text = path.read_text()
    if path.suffix == ".py":
        return text
    header, _, diff = text.partition("\n--- ")
    topic = path.parent.name
    solution = course.get(topic).file_in(course.SOLUTIONS).read_text()
    body = re.sub(r'\A(?:[ \t]*#[^\n]*\n|\s*\n)*(?:"""|\'\'\').*?(?:"""|\'\'\')\n', "", solution, count=1, flags=re.DOTALL)
    body = "".join(line for line in body.splitlines(keepends=True) if not re.match(r"^[ \t]*# (BEGIN|END) SOLUTION\s*$", line))
    for old, new in _hunks("--- " + diff):
        if body.count(old) != 1:
            raise StaleMutant(f"{path.relative_to(ROOT)}: a hunk occurs {body.count(old)} times in {topic}'s solution, not once:\n{old}")
        body = body.replace(old, new)
    return f'"""{header.strip()}\n"""\n' + body


# ---------------------------------------------------------------- a local Dask cluster (tests/test_cluster.py, benchmarks/bench_cluster.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and workers, each its own process, as an instructor starts them."""

    def __init__(self, logs: Path):
        self.logs, self.port = logs, free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        # The workers import this checkout's suite (a clean clone in CI is installed -e).
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.n = 0

    def _start(self, *args: str, name: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True)

    def start_scheduler(self) -> None:
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard", name=f"scheduler{self.n}")
        self.n += 1

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            # --no-nanny: the worker is the process; a kill by its pid is the worker's death.
            self.workers.append(self._start("worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard", name=f"worker{self.n}"))
            self.n += 1
        import distributed

        with distributed.Client(self.address, timeout="60s") as client:
            client.wait_for_workers(len([w for w in self.workers if w.poll() is None]), timeout=120)

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                self.kill(proc)
