"""Grade a whole class: `kata grade SUBMISSIONS [--out DIR] [--topics a,b] [--jobs N] [--hidden DIR] [--force]`.

SUBMISSIONS holds one entry per student: a folder shaped like exercises/ (only the topics
that student did) or a .zip of one. Each student is graded in fresh processes (one per
topic) on a private copy holding nothing but their topic modules, under a per-check
timeout, a per-student time limit and a memory limit. Results come back through a JSON
file stamped with a secret the student's code never sees in its environment, so a
forged file or a fake summary on stdout is not taken for a grade.

Output in --out (default gradebook/):
    grades.csv               student,topic,score,max_score,status (rebuilt from results/ every run)
    results/<student>.json   Gradescope's results.json format (written atomically, one per student)
    feedback/<student>.md    the learner-facing report

A student whose results/<student>.json already covers the requested topics is not graded
again (unless --force), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kata import course, mistakes, sandbox, zygote
from kata.files import write_atomically

STATUSES = ("passed", "partial", "failed", "not_started", "missing", "error", "timeout")
TOKEN_ENV = "KATA_RESULT_TOKEN"
# Zip archives: a class's submissions are small source files; anything near these is not one.
MAX_ZIP_BYTES = 50 * 2**20
MAX_ZIP_FILES = 1000


class Refused(ValueError):
    """A submission that cannot be graded at all (unsafe or unreadable archive)."""


@dataclass
class Limits:
    check_timeout: float | None = None  # per check; None: each topic's course.toml timeout
    student_timeout: float = 900.0  # all of one student's topics together
    memory_mb: int = 4096  # address space of each grading process (CPU only, see _limit_memory)
    device: str = "cpu"
    threads: int = 1  # torch threads per grading process, so parallel students do not oversubscribe
    sandbox: bool = False  # confine each executor with the kernel (kata.sandbox); set where probe() passes


@dataclass
class TopicResult:
    topic: str
    status: str
    score: float = 0.0
    max_score: float = 0.0
    message: str = ""
    checks: list[dict] = field(default_factory=list)
    mistakes: list[dict] = field(default_factory=list)  # known mistakes the failures match (kata.mistakes)


# ---------------------------------------------------------------- submissions


def find_submissions(folder: Path) -> dict[str, Path]:
    """Student id -> folder or zip. A folder and a zip with the same id are refused later."""
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found.setdefault(entry.name, []).append(entry)
        elif entry.suffix == ".zip" and entry.is_file():
            found.setdefault(entry.stem, []).append(entry)
    return {sid: paths[0] if len(paths) == 1 else paths for sid, paths in found.items()}


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_FILES:
        raise Refused(f"the archive holds {len(infos)} entries (limit {MAX_ZIP_FILES})")
    total = 0
    for info in infos:
        name = info.filename
        path = PurePosixPath(name)
        if name.startswith("/") or "\\" in name or (path.parts and path.parts[0].endswith(":")):
            raise Refused(f"the archive has an absolute path: {name}")
        if ".." in path.parts:
            raise Refused(f"the archive has a path leaving its folder: {name}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise Refused(f"the archive holds a link: {name}")
        total += info.file_size
        if total > MAX_ZIP_BYTES:
            raise Refused(f"the archive unpacks to more than {MAX_ZIP_BYTES // 2**20} MiB")
    return infos


def _topic_file_in(names: dict[str, object], topic: str):
    """The entry for <topic>/<topic>.py, at the top or under one wrapping folder (alice/attention/attention.py)."""
    want = f"{topic}/{topic}.py"
    hits = [n for n in names if n == want or (n.endswith("/" + want) and n.count("/") == 2)]
    return names[hits[0]] if len(hits) == 1 else None


def private_copy(source: Path, topics: list[str], dest: Path) -> dict[str, bool]:
    """Copy only the student's topic modules into dest/<topic>/<topic>.py; topic -> found.
    Nothing else of theirs (conftest.py, pytest.ini, sitecustomize, .pth, tests) is copied."""
    found = {}
    if source.suffix == ".zip":
        try:
            with zipfile.ZipFile(source) as archive:
                infos = {i.filename: i for i in _safe_members(archive) if not i.is_dir()}
                for topic in topics:
                    info = _topic_file_in(infos, topic)
                    found[topic] = info is not None
                    if info is not None:
                        target = dest / topic / f"{topic}.py"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(info))
        except zipfile.BadZipFile as exc:
            raise Refused(f"not a readable zip archive: {exc}") from None
        return found
    for topic in topics:
        src = source / topic / f"{topic}.py"
        if not src.exists() and (source / f"{topic}.py").exists():
            src = source / f"{topic}.py"  # a flat upload (Gradescope, a single file) is accepted too
        found[topic] = src.is_file() and not src.is_symlink()
        if found[topic]:
            target = dest / topic / f"{topic}.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return found


# ---------------------------------------------------------------- one topic, one process


def _hidden_graders(hidden: Path | None, topic: str) -> list[str]:
    if hidden is None:
        return []
    return [str(p) for p in sorted(hidden.glob(f"test_{topic}*.py"))]


# What a confined executor may read: Python and its packages, the suite's own public code,
# and what the system's libraries and torch look up (CPU topology, /proc/self). Not the
# rest of the repository (a gradebook or hidden graders may be kept there), not /tmp.
SYSTEM_READABLE = ["/usr", "/lib", "/lib64", "/etc", "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat",
                   "/proc/sys", "/proc/driver", "/sys/devices/system/cpu", "/sys/fs/cgroup", "/sys/bus/pci"]  # fmt: skip


def readable(impl: Path) -> list[str]:
    root = course.ROOT.resolve()
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if path.exists() and path != root and path not in root.parents and not (path == root / "exercises"):
            python.add(str(path))
    suite = [str(root / name) for name in ("kata", "graders", "solutions")]
    return sorted(python) + suite + [str(impl.resolve())] + SYSTEM_READABLE


def grade_topic(impl: Path, topic: course.Topic, limits: Limits, budget: float, scratch: Path, hidden: Path | None) -> TopicResult:
    """Run the topic's grader on impl: a fresh judge process, whose executor (the only
    process that runs the student's code, kata.executor) is confined by kata.sandbox.
    Never raises for the student's faults."""
    from kata.engine import grader_args

    token = secrets.token_hex(16)
    # scratch/work is the executor's folder and HOME: a file in it afterwards was written by
    # the submission. scratch/tmp is its TMPDIR, where torch may keep temporary files.
    # scratch/judge is the judge's own: the results file is there, out of the executor's reach.
    work, tmp, judge = scratch / "work", scratch / "tmp", scratch / "judge"
    shutil.rmtree(scratch, ignore_errors=True)
    for folder in (work, tmp, judge):
        folder.mkdir(parents=True)
    out = judge / f"results-{secrets.token_hex(4)}.json"
    args = grader_args(topic, str(impl), limits.device, f"--kata-json={out}", "-q", timeout=limits.check_timeout)
    args[1:1] = _hidden_graders(hidden, topic.name)
    confinement = {
        "cwd": str(work),
        "env": {"HOME": str(work), "TMPDIR": str(tmp)},
        "writable": [str(work), str(tmp)],
        "processes": topic.worker_processes,
        # CUDA reserves far more address space than it uses, so the cap applies on the CPU only.
        "memory_mb": limits.memory_mb if limits.device == "cpu" else None,
    }
    if limits.sandbox:
        confinement["confine"] = {"read": readable(impl), "write": [str(work), str(tmp)], "processes": topic.worker_processes}
    env = {
        "HOME": str(judge),
        "TMPDIR": str(judge),
        TOKEN_ENV: token,
        "OMP_NUM_THREADS": str(limits.threads),
        "MKL_NUM_THREADS": str(limits.threads),
        sandbox.OPTIONS_ENV: json.dumps(confinement),
    }
    log = judge / "judge.log"
    child = start_judge(args, env=env, cwd=judge, log=log)
    try:
        status = child.wait(max(budget, 1.0))
        if status is None:
            return TopicResult(topic.name, "timeout", message=f"grading did not finish within the per-student limit ({limits.student_timeout:g} s)")
    finally:
        child.kill()  # the judge; its executor ends with its connection to the zygote
    output = log.read_bytes() if log.exists() else b""
    tail = output.decode(errors="replace").strip().splitlines()[-3:]
    written = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    if written:
        return TopicResult(topic.name, "error", message=f"the code wrote files ({', '.join(written[:5])}); submissions may not write files")
    try:
        data = json.loads(out.read_text())
        if data.get("token") != token:
            raise ValueError("the results file was not written by the grader")
    except (OSError, ValueError) as exc:
        out.unlink(missing_ok=True)
        how = f"exit code {status}" if status >= 0 else f"killed by {signal.Signals(-status).name}"
        return TopicResult(topic.name, "error", message=f"the grading process ended without a valid result ({how}; {exc}; {' / '.join(tail)})")
    out.unlink()
    for unloaded in data.get("unloaded", []):
        status = "missing" if unloaded["verdict"] == "missing" else "error"
        return TopicResult(topic.name, status, message=unloaded["message"], checks=data["checks"])
    result = summarise(topic.name, data["checks"])
    if result.status in ("partial", "failed"):
        result.mistakes = [
            {"name": d.mistake.name, "line": d.mistake.line, "hints": list(d.mistake.hints)}
            for d in mistakes.diagnose_topic(topic.name, data["checks"])
        ]
    return result


class _Spawned:
    """A judge started as a fresh interpreter, where the zygote cannot fork one."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        _kill_group(self.proc)


def start_judge(pytest_args: list[str], *, env: dict, cwd: Path, log: Path):
    """The judge of one grading, forked from the class's warm zygote (milliseconds), or where
    fork is unavailable a fresh interpreter (seconds): same verdicts either way."""
    with log.open("wb") as out:
        if zygote.available():
            return zygote.fork_judge(["judge", *pytest_args], output_fd=out.fileno(), env=env, cwd=str(cwd))
        # -I: no PYTHON* variables, user site or current folder on sys.path; -B: no .pyc files.
        boot = f"import sys; sys.path.insert(0, {str(course.ROOT)!r}); from kata import cli; raise SystemExit(cli.main(sys.argv[1:]))"
        cmd = [sys.executable, "-I", "-B", "-c", boot, "judge", *pytest_args]
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        return _Spawned(subprocess.Popen(cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def summarise(topic: str, checks: list[dict]) -> TopicResult:
    graded = [c for c in checks if c["verdict"] != "skipped"]
    score = sum(c["points"] for c in graded if c["verdict"] == "passed")
    max_score = sum(c["points"] for c in graded)
    verdicts = {c["verdict"] for c in graded}
    if not graded:
        status = "error"
    elif verdicts == {"passed"}:
        status = "passed"
    elif verdicts == {"not started"}:
        status = "not_started"
    elif verdicts == {"timed out"}:
        status = "timeout"
    elif verdicts == {"crashed"} and len({c["message"] for c in graded}) == 1:
        # One error shared by every check: the file could not even be loaded (syntax, MemoryError...).
        return TopicResult(topic, "error", 0.0, max_score, f"the file could not be run: {graded[0]['message']}", checks)
    elif score > 0:
        status = "partial"
    else:
        status = "failed"
    return TopicResult(topic, status, score, max_score, checks=checks)


# ---------------------------------------------------------------- one student


def grade_student(
    sid: str, source, topics: list[course.Topic], limits: Limits, hidden: Path | None, max_scores: dict[str, float], *, keep_max: bool = False
) -> list[TopicResult]:
    """Every topic of one student. max_scores gives each topic's points when its grading
    did not run; with keep_max=False it replaces the graded sum too, so a class shares one max."""
    started = time.monotonic()
    # Not named for the student: the executor's TMPDIR lies in it, and a long path there
    # breaks the Unix sockets that worker processes (a DataLoader's) pass tensors over.
    with tempfile.TemporaryDirectory(prefix="kata-grade-") as tmp:
        tmp = Path(tmp)
        impl, scratch = tmp / "submission", tmp / "scratch"
        impl.mkdir()
        scratch.mkdir()
        try:
            found = private_copy(_one_source(source), [t.name for t in topics], impl)
        except Refused as exc:
            return refused(exc, topics, max_scores)
        results = []
        for topic in topics:
            if not found[topic.name]:
                results.append(TopicResult(topic.name, "missing", 0.0, max_scores[topic.name], f"no {topic.name}/{topic.name}.py in the submission"))
                continue
            budget = limits.student_timeout - (time.monotonic() - started)
            if budget <= 0:
                results.append(TopicResult(topic.name, "timeout", 0.0, max_scores[topic.name], "the per-student time limit was used up by earlier topics"))
                continue
            result = grade_topic(impl, topic, limits, budget, scratch, hidden)
            if not (keep_max and result.checks):
                result.max_score = max_scores[topic.name]  # the same for every student, whatever happened
            results.append(result)
    return results


def _one_source(source) -> Path:
    if isinstance(source, list):
        raise Refused(f"more than one submission for this student: {', '.join(p.name for p in source)}")
    return source


def refused(exc: Refused, topics: list[course.Topic], max_scores) -> list[TopicResult]:
    return [TopicResult(t.name, "error", 0.0, max_scores[t.name], f"submission refused: {exc}") for t in topics]


def submitted_files(source, topics: list[str]) -> dict[str, bytes | None]:
    """topic -> the bytes of the student's topic module (None: not submitted), as a
    private copy holds them; raises Refused as grade_student would."""
    with tempfile.TemporaryDirectory(prefix="kata-submitted-") as tmp:
        found = private_copy(_one_source(source), topics, Path(tmp))
        return {t: (Path(tmp) / t / f"{t}.py").read_bytes() if found[t] else None for t in topics}


class ReferenceMaxScores(dict):
    """Max scores from grading the reference solution, worked out on first use: a single
    submission (Gradescope) pays for it only on the topics whose own grading did not run."""

    def __init__(self, limits: Limits, hidden: Path | None):
        super().__init__()
        self.limits, self.hidden = limits, hidden

    def __missing__(self, topic: str) -> float:
        self[topic] = reference_max_scores([course.get(topic)], self.limits, self.hidden)[topic]
        return self[topic]


def grade_one(submission: Path, results_path: Path, topics: list[course.Topic], limits: Limits, hidden: Path | None = None) -> int:
    """Grade one submission into a Gradescope results.json (run_autograder's job)."""
    started = time.monotonic()
    max_scores = ReferenceMaxScores(limits, hidden)
    results = grade_student("submission", submission, topics, limits, hidden, max_scores, keep_max=True)
    write_atomically(results_path, json.dumps(gradescope_json(results, time.monotonic() - started), indent=1))
    for r in results:
        print(f"{r.topic}: {r.score:g} of {r.max_score:g} ({r.status})")
    return 0


def gradescope_json(results: list[TopicResult], seconds: float) -> dict:
    tests = []
    for r in results:
        if not r.checks:
            tests.append({"name": f"{r.topic}", "score": 0.0, "max_score": r.max_score, "status": "failed",
                          "output": f"{r.status}: {r.message}", "visibility": "visible"})  # fmt: skip
        for c in r.checks:
            if c["verdict"] == "skipped":
                continue
            tests.append({
                "name": f"{r.topic}: {c['name']}",
                "score": c["points"] if c["verdict"] == "passed" else 0.0,
                "max_score": c["points"],
                "status": "passed" if c["verdict"] == "passed" else "failed",
                "output": c["verdict"].upper() + (f": {c['message']}" if c["message"] else ""),
                # An instructor's hidden checks show on Gradescope once the due date has passed.
                "visibility": "after_due_date" if c["name"].startswith("hidden: ") else "visible",
            })  # fmt: skip
    return {
        "score": sum(r.score for r in results),
        "execution_time": round(seconds, 1),
        "tests": tests,
        "extra_data": {"topics": [
            {"topic": r.topic, "score": r.score, "max_score": r.max_score, "status": r.status, "message": r.message, "mistakes": r.mistakes}
            for r in results
        ]},  # fmt: skip
    }


def feedback_markdown(sid: str, results: list[TopicResult]) -> str:
    lines = [f"# Feedback for {sid}", ""]
    total, most = sum(r.score for r in results), sum(r.max_score for r in results)
    lines += [f"Total: {total:g} of {most:g} points.", ""]
    for r in results:
        lines += [f"## {r.topic}: {r.score:g} of {r.max_score:g} ({r.status.replace('_', ' ')})", ""]
        if r.message:
            lines += [r.message, ""]
        for m in r.mistakes:
            hints = f" Read hint {', '.join(map(str, m['hints']))} (`make hint topic={r.topic} n={m['hints'][0]}`)." if m["hints"] else ""
            lines += [f"Looks like a known mistake: **{m['name']}**: {m['line']}{hints}", ""]
        for c in r.checks:
            if c["verdict"] in ("passed", "skipped"):
                continue
            lines.append(f"- **{c['verdict'].upper()}** `{c['name']}`")
            lines += [f"      {line}" for line in c["message"].splitlines()]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- the class


def reference_max_scores(topics: list[course.Topic], limits: Limits, hidden: Path | None) -> dict[str, float]:
    """Grade the reference solution once per topic: its points are the max scores, and a
    solution that fails here means the grading machine itself is broken."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="kata-grade-reference-") as tmp:
        for topic in topics:
            r = grade_topic(course.SOLUTIONS, topic, limits, 600.0, Path(tmp), hidden)
            if r.status != "passed":
                bad = [f"{c['name']}: {c['verdict']}" for c in r.checks if c["verdict"] != "passed"]
                raise RuntimeError(f"the reference solution does not pass the {topic.name} grader here ({r.status}; {'; '.join(bad[:3]) or r.message})")
            out[topic.name] = r.max_score
    return out


def already_graded(path: Path, topics: list[str]) -> bool:
    try:
        data = json.loads(path.read_text())
        return {t["topic"] for t in data["extra_data"]["topics"]} >= set(topics)
    except (OSError, ValueError, KeyError, TypeError):
        return False  # missing or damaged: grade again


def write_grades_csv(out: Path, students: list[str], topics: list[str]) -> int:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["student", "topic", "score", "max_score", "status"])
    rows = 0
    for sid in students:
        try:
            data = json.loads((out / "results" / f"{sid}.json").read_text())
        except (OSError, ValueError):
            continue
        by_topic = {t["topic"]: t for t in data["extra_data"]["topics"]}
        for topic in topics:
            if topic in by_topic:
                t = by_topic[topic]
                writer.writerow([sid, topic, f"{t['score']:g}", f"{t['max_score']:g}", t["status"]])
                rows += 1
    write_atomically(out / "grades.csv", buf.getvalue())
    return rows


def write_class_mistakes(out: Path, students: list[str], topics: list[str], shown: int = 5) -> list[str]:
    """mistakes.csv (topic, mistake, students, description) from every student's results: what
    the class got wrong, most frequent first; returns the lines to print, `shown` per topic."""
    counts: dict[tuple[str, str], list] = {}
    for sid in students:
        try:
            data = json.loads((out / "results" / f"{sid}.json").read_text())
        except (OSError, ValueError):
            continue
        for t in data["extra_data"]["topics"]:
            if t["topic"] in topics:
                for m in t.get("mistakes", []):
                    counts.setdefault((t["topic"], m["name"]), [m["line"], 0])[1] += 1
    ranked = sorted(counts.items(), key=lambda kv: (topics.index(kv[0][0]), -kv[1][1], kv[0][1]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["topic", "mistake", "students", "description"])
    lines = []
    for (topic, name), (line, n) in ranked:
        writer.writerow([topic, name, n, line])
        if sum(1 for shown_line in lines if shown_line.startswith(f"  {topic}: ")) < shown:
            lines.append(f"  {topic}: {name} ({n} student{'s' if n != 1 else ''}): {line}")
    write_atomically(out / "mistakes.csv", buf.getvalue())
    return lines


class _Pending:
    """Max scores that a future will give: looked up only once a student's grading is done."""

    def __init__(self, future):
        self.future = future

    def __getitem__(self, topic: str) -> float:
        return self.future.result()[topic]


class Progress:
    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.lock = threading.Lock()

    def step(self, sid: str, results: list[TopicResult]) -> None:
        with self.lock:
            self.done += 1
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            width = 24
            filled = width * self.done // max(self.total, 1)
            statuses = " ".join(f"{r.topic}={r.status}" for r in results)
            print(f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  ETA {eta:4.0f}s  {sid}: {statuses}", file=sys.stderr, flush=True)


def record_student(out: Path, sid: str, results: list[TopicResult], seconds: float) -> None:
    """A graded student's results/<sid>.json and feedback/<sid>.md, each written atomically:
    the only files a grading writes per student, by the process that coordinates the class."""
    write_atomically(out / "results" / f"{sid}.json", json.dumps(gradescope_json(results, seconds), indent=1))
    write_atomically(out / "feedback" / f"{sid}.md", feedback_markdown(sid, results))


def to_grade(submissions: Path, out: Path, names: list[str], *, force: bool, where: str) -> tuple[dict[str, Path], list[str]]:
    """The class's submissions, and the students still to grade (resuming an interrupted run)."""
    students = find_submissions(submissions)
    todo = [sid for sid in students if force or not already_graded(out / "results" / f"{sid}.json", names)]
    print(f"{len(students)} submissions, {len(students) - len(todo)} already graded, {len(todo)} to grade {where}", file=sys.stderr)
    return students, todo


def finish_class(out: Path, students: list[str], names: list[str]) -> int:
    """grades.csv and mistakes.csv, rebuilt from every student's results."""
    rows = write_grades_csv(out, students, names)
    frequent = write_class_mistakes(out, students, names)
    if frequent:
        print("most frequent known mistakes (all in mistakes.csv):\n" + "\n".join(frequent), file=sys.stderr)
    print(f"wrote {out / 'grades.csv'} ({rows} rows), {out / 'mistakes.csv'}, {out / 'results'}/, {out / 'feedback'}/", file=sys.stderr)
    return 0


def grade_class(
    submissions: Path, out: Path, topics: list[course.Topic], *, jobs: int, limits: Limits, hidden: Path | None = None, force: bool = False
) -> int:
    names = [t.name for t in topics]
    students, todo = to_grade(submissions, out, names, force=force, where=f"with {jobs} jobs")
    if todo:
        zygote.start(topics=topics)  # one warm zygote for the class: each judge and executor is a fork of it
        progress = Progress(len(todo))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            # The reference solution is graded first in the queue, next to the first
            # students instead of before them (a second of every run, on a free core). A
            # student's results wait for its max scores, so none is written if it fails.
            reference = pool.submit(reference_max_scores, topics, limits, hidden)
            max_scores = _Pending(reference)

            def one(sid):
                started = time.monotonic()
                results = grade_student(sid, students[sid], topics, limits, hidden, max_scores)
                record_student(out, sid, results, time.monotonic() - started)
                return sid, results

            futures = [pool.submit(one, sid) for sid in todo]
            try:
                reference.result()
                for future in as_completed(futures):
                    progress.step(*future.result())
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return finish_class(out, sorted(students), names)
