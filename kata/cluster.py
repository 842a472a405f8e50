"""Grading a class on a Dask cluster: `kata grade SUBMISSIONS --cluster ADDRESS`.

Each (student, topic) grading is one task (`grade_task`) on a `dask worker`, which grades
it exactly as `kata grade` does on one machine: a private copy of the student's module,
a judge and a sandboxed executor forked from the worker's own warm zygote, the same
limits. Submissions travel to workers as bytes inside the task (no shared filesystem),
results come back as plain data, and this process, the coordinator, alone writes the
gradebook (results/<student>.json atomically, then grades.csv), as a local grading does.

Faults: a worker that dies mid-task has its task run again elsewhere (Dask reschedules
it); a scheduler that goes away is reconnected to and every grading not yet recorded is
sent again; a coordinator interrupted and started again resumes like a local grading (a
student whose results/<student>.json covers the topics is not graded again). A student's
results are written once, when all its topics are in, so each ends with exactly one row
per topic whatever happened.

A worker whose suite (kata/, graders/, solutions/, course.toml) differs from the
coordinator's is refused with one line, as is one that cannot sandbox when
--require-sandbox is given: its gradings go to the other workers.

Install with `pip install -e '.[cluster]'` on the coordinator and on every worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sys
import tempfile
import time
from dataclasses import asdict
from functools import cache
from pathlib import Path

from kata import course, grade, sandbox, zygote

SUITE = ("kata", "graders", "solutions", "course.toml")
# How long the coordinator keeps trying to reach a scheduler that went away, in all.
RECONNECT_S = 120.0


class WorkerRefused(RuntimeError):
    """This worker cannot grade for this coordinator (another suite, no sandbox); args: (message, worker)."""


@cache
def suite_version() -> str:
    """A digest of everything that decides a verdict: the engine, graders, fingerprints,
    reference solutions and course.toml."""
    digest = hashlib.sha256()
    for top in SUITE:
        path = course.ROOT / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".py", ".json", ".toml"))
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(str(f.relative_to(course.ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "this process"


def _worker_limits(payload: dict) -> grade.Limits:
    """The coordinator's limits, with this worker's own sandbox (refused if required and missing)."""
    if payload["suite"] != suite_version():
        raise WorkerRefused(
            f"worker {_worker_address()} runs suite {suite_version()[:12]}, the coordinator {payload['suite'][:12]}: "
            "install the same version of the suite on every worker", _worker_address())  # fmt: skip
    limits = grade.Limits(**payload["limits"])
    missing = _sandbox_missing()
    if missing and payload["require_sandbox"]:
        raise WorkerRefused(f"worker {_worker_address()} cannot sandbox ({missing}) and --require-sandbox was given", _worker_address())
    limits.sandbox = missing is None
    return limits


@cache
def _sandbox_missing() -> str | None:
    return sandbox.probe()


def _hidden_folder(files: dict[str, bytes] | None, tmp: Path) -> Path | None:
    if not files:
        return None
    folder = tmp / "hidden"
    folder.mkdir()
    for name, data in files.items():
        (folder / Path(name).name).write_bytes(data)
    return folder


def grade_task(payload: dict) -> dict:
    """On a worker: one student's one topic. payload: suite, sid, topic, source (the module's
    bytes, or None if not submitted), limits, require_sandbox, hidden (name -> bytes)."""
    started = time.monotonic()
    limits = _worker_limits(payload)
    topic = course.get(payload["topic"])
    zygote.start()  # the worker's warm zygote, started by its first task and kept
    with tempfile.TemporaryDirectory(prefix="kata-cluster-") as tmp:
        tmp = Path(tmp)
        submission = tmp / "submission"
        submission.mkdir()
        if payload["source"] is not None:
            (submission / topic.name).mkdir()
            (submission / topic.name / f"{topic.name}.py").write_bytes(payload["source"])
        hidden = _hidden_folder(payload.get("hidden"), tmp)
        results = grade.grade_student(payload["sid"], submission, [topic], limits, hidden, {topic.name: 0.0}, keep_max=True)
    return {"results": [asdict(r) for r in results], "seconds": time.monotonic() - started, "worker": _worker_address()}


def reference_task(payload: dict) -> float:
    """On a worker: the topic's max score, from grading the reference solution there."""
    limits = _worker_limits(payload)
    zygote.start()
    with tempfile.TemporaryDirectory(prefix="kata-cluster-") as tmp:
        hidden = _hidden_folder(payload.get("hidden"), Path(tmp))
        return grade.reference_max_scores([course.get(payload["topic"])], limits, hidden)[payload["topic"]]


# ---------------------------------------------------------------- the coordinator


def grade_class(
    submissions: Path, out: Path, topics: list[course.Topic], *, address: str, limits: grade.Limits,
    require_sandbox: bool = False, hidden: Path | None = None, force: bool = False,
) -> int:  # fmt: skip
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise RuntimeError("grading on a cluster needs Dask: pip install -e '.[cluster]'") from None
    names = [t.name for t in topics]
    students, todo = grade.to_grade(submissions, out, names, force=force, where=f"on the cluster at {address}")
    hidden_files = {p.name: p.read_bytes() for p in sorted(hidden.glob("test_*.py"))} if hidden else None
    common = {"suite": suite_version(), "limits": asdict(limits), "require_sandbox": require_sandbox, "hidden": hidden_files}

    results: dict[str, dict[str, grade.TopicResult]] = {sid: {} for sid in todo}
    seconds: dict[str, float] = {sid: 0.0 for sid in todo}
    tasks: dict[tuple[str, str], dict] = {}  # (sid, topic) -> payload, while not graded
    for sid in todo:
        try:
            sources = grade.submitted_files(students[sid], names)
        except grade.Refused as exc:
            results[sid] = {r.topic: r for r in grade.refused(exc, topics, {n: 0.0 for n in names})}
            continue
        for name in names:
            tasks[(sid, name)] = {**common, "sid": sid, "topic": name, "source": sources[name]}
    max_scores: dict[str, float] = {}
    refused_workers: set[str] = set()
    progress = grade.Progress(len(todo))
    run = secrets.token_hex(4)  # task keys of this run only: Dask must not reuse an earlier run's

    def record(sid: str) -> None:
        """Write a student once all its topics and their max scores are in."""
        if sid in results and set(results[sid]) == set(names) and set(max_scores) >= set(names):
            graded = [results[sid][n] for n in names]
            for r in graded:
                r.max_score = max_scores[r.topic]  # the same for every student, as a local grading does
            grade.record_student(out, sid, graded, seconds[sid])
            progress.step(sid, graded)
            del results[sid]

    deadline, reached = None, False
    while todo and (tasks or len(max_scores) < len(names) or results):
        try:
            try:
                client = Client(address, timeout="10s")
            except OSError as exc:
                if not reached:  # a wrong address, or no scheduler started: say so at once
                    raise RuntimeError(f"cannot reach a Dask scheduler at {address} ({type(exc).__name__}: {exc})") from None
                raise
            reached = True
            with client:
                # A scheduler started again may have no workers yet (Slurm or the admin
                # brings them back): wait for one, within the reconnection time.
                client.wait_for_workers(1, timeout=max(5.0, (deadline or time.monotonic() + RECONNECT_S) - time.monotonic()))
                workers = _usable_workers(client, refused_workers)
                deadline = None
                futures = {}
                for name in names:
                    if name not in max_scores:
                        fut = client.submit(reference_task, {**common, "topic": name}, key=f"kata-reference-{name}-{run}", pure=False, workers=workers)
                        futures[fut] = ("reference", name)
                for (sid, name), payload in tasks.items():
                    fut = client.submit(grade_task, payload, key=f"kata-grade-{name}-{sid}-{run}", pure=False, workers=workers)
                    futures[fut] = ("grade", (sid, name))
                resubmit, lost = False, 0
                for fut in as_completed(list(futures)):
                    kind, what = futures[fut]
                    try:
                        value = fut.result()
                    except WorkerRefused as exc:
                        if exc.args[1] not in refused_workers:
                            print(f"kata: refused: {exc.args[0]}", file=sys.stderr)
                            refused_workers.add(exc.args[1])
                        resubmit = True
                        continue
                    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - lost (scheduler restarted) or the grading machine's own failure
                        if _is_lost(exc):
                            resubmit, lost = True, lost + 1
                            continue
                        if kind == "reference":
                            raise RuntimeError(f"the reference solution of {what} could not be graded on the cluster: {type(exc).__name__}: {exc}") from None
                        sid, name = what
                        value = {"results": [asdict(grade.TopicResult(name, "error", message=f"the grading failed on the cluster ({type(exc).__name__}: {exc})"))], "seconds": 0.0}
                    if kind == "reference":
                        max_scores[what] = float(value)
                        for sid in list(results):
                            record(sid)
                        continue
                    sid, name = what
                    if (sid, name) not in tasks:
                        continue  # already recorded: a task that ran twice counts once
                    del tasks[(sid, name)]
                    results[sid][name] = grade.TopicResult(**value["results"][0])
                    seconds[sid] += float(value.get("seconds", 0.0))
                    record(sid)
                if lost:
                    print(f"kata: lost the cluster's results of {lost} gradings (its scheduler restarted?); sending them again", file=sys.stderr)
                if not resubmit and (tasks or len(max_scores) < len(names)):
                    raise RuntimeError("the cluster finished without grading everything")
        except (OSError, TimeoutError) as exc:
            # The scheduler went away (restarted, network): connect again and send again
            # whatever is not recorded yet.
            deadline = deadline or time.monotonic() + RECONNECT_S
            if time.monotonic() > deadline:
                raise RuntimeError(f"lost the cluster at {address} and could not reconnect within {RECONNECT_S:g} s ({exc})") from None
            print(f"kata: lost the cluster at {address} ({type(exc).__name__}: {exc}); reconnecting", file=sys.stderr)
            time.sleep(2.0)
    return grade.finish_class(out, sorted(students), names)


def _usable_workers(client, refused: set[str]) -> list[str] | None:
    """The workers that may take gradings: those running this suite (one line for each that
    is not), None for any (all agree)."""
    versions = client.run(suite_version)
    mine = suite_version()
    for worker, version in sorted(versions.items()):
        if version != mine and worker not in refused:
            print(f"kata: refused: worker {worker} runs suite {version[:12]}, the coordinator {mine[:12]}: "
                  "install the same version of the suite on every worker", file=sys.stderr)  # fmt: skip
            refused.add(worker)
    usable = sorted(w for w in versions if w not in refused)
    if not usable:
        raise RuntimeError(f"no worker of the cluster can grade for this coordinator ({len(versions)} refused)")
    return None if len(usable) == len(versions) else usable


def _is_lost(exc: BaseException) -> bool:
    """A task the cluster lost (its scheduler restarted, it was cancelled), to send again."""
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError

    return isinstance(exc, (CancelledError, asyncio.CancelledError, CommClosedError)) or type(exc).__name__ in ("FutureCancelledError", "FuturesCancelledError")
