"""The learner's verbs besides `check`: list, hint, watch, solution, solutions-branch, reset, notebook.

Learner state (progress from the latest checks, hint counters) lives in .kata/state.json and
backups in .kata/backups/, one ignored folder. A missing or corrupt state file is rebuilt,
never fatal: a corrupt one is kept beside it for inspection.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from kata import course
from kata.stubs import backup
from kata.files import write_atomically

STATE_DIR = course.ROOT / ".kata"


class LearnerError(Exception):
    """A learner verb cannot do what was asked; the message says why (exit code 2)."""


# ---------------------------------------------------------------- state


def state_file() -> Path:
    return STATE_DIR / "state.json"


def load_state() -> dict:
    path = state_file()
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not all(isinstance(state.get(k, {}), dict) for k in ("progress", "hints")):
            raise ValueError("unexpected layout")
    except FileNotFoundError:
        state = {}
    except (OSError, ValueError) as exc:
        kept = path.with_name(f"state.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.json")
        try:
            path.replace(kept)
            where = f"; the old file is kept as {kept.relative_to(course.ROOT)}"
        except OSError:
            where = ""
        print(f"kata: {path.relative_to(course.ROOT)} was unreadable ({exc}), starting a new one{where}", file=sys.stderr)
        state = {}
    state.setdefault("progress", {})
    state.setdefault("hints", {})
    return state


def save_state(state: dict) -> None:
    write_atomically(state_file(), json.dumps(state, indent=1, sort_keys=True))


def file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def record_check(topic: str, results: dict) -> None:
    """Called after a full `kata check` of the learner's own exercises/ file."""
    checks = [c for c in results["checks"] if c["verdict"] != "skipped"]
    state = load_state()
    state["progress"][topic] = {
        "passed": sum(c["verdict"] == "passed" for c in checks),
        "points": sum(c["points"] for c in checks if c["verdict"] == "passed"),
        "max_points": sum(c["points"] for c in checks),
        "total": len(checks),
        "not_started": sum(c["verdict"] == "not started" for c in checks),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "file": file_digest(course.get(topic).file_in(course.EXERCISES)),
    }
    save_state(state)


def status_of(topic: course.Topic, record: dict | None) -> str:
    if not record:
        return "not started"
    if record["total"] and record["passed"] == record["total"]:
        status = "passing"
    elif record["not_started"] == record["total"]:
        status = "not started"
    else:
        status = "in progress"
    if record.get("file") != file_digest(topic.file_in(course.EXERCISES)):
        status += " (edited since)"
    return status


# ---------------------------------------------------------------- list


def list_course() -> str:
    state = load_state()
    rows = [("topic", "level", "title", "points", "status")]
    passing = 0
    for t in course.topics():
        record = state["progress"].get(t.name)
        points = f"{record['points']:g}/{record['max_points']:g}" if record else "-"
        status = status_of(t, record)
        passing += status == "passing"
        rows.append((t.name, str(t.level), t.title, points, status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    total = len(rows) - 1
    bar = "#" * round(20 * passing / total) if total else ""
    lines += ["", f"Progress: [{bar:<20}] {passing} of {total} topics passing. Points come from your latest `make check` of each topic."]
    return "\n".join(lines)


# ---------------------------------------------------------------- hints

HINT = re.compile(r"^### Hint (\d+)\s*$", re.MULTILINE)


def hints(topic: course.Topic) -> list[str]:
    """The topic README's `### Hint N` sections, under `## Hints`, in order."""
    readme = (course.EXERCISES / topic.name / "README.md").read_text()
    section = re.search(r"^## Hints\s*$(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    if not section:
        return []
    parts = HINT.split(section.group(1))
    return [body.strip() for body in parts[2::2]]


def hint(topic: course.Topic, n: str | None) -> str:
    found = hints(topic)
    if not found:
        return f"No hints for {topic.name} yet: see exercises/{topic.name}/README.md."
    if n == "all":
        return "\n\n".join(f"Hint {i} of {len(found)}:\n{h}" for i, h in enumerate(found, 1))
    state = load_state()
    shown = int(state["hints"].get(topic.name, 0))
    if shown >= len(found):
        return (f"That was the last hint: all {len(found)} are shown with `make hint topic={topic.name} n=all`.\n"
                f"Still stuck? `make solution topic={topic.name}` shows the reference next to your code.")  # fmt: skip
    state["hints"][topic.name] = shown + 1
    save_state(state)
    left = len(found) - shown - 1
    more = f"{left} more: run `make hint topic={topic.name}` again" if left else "that was the last one"
    return f"Hint {shown + 1} of {len(found)} ({more}):\n{found[shown]}"


# ---------------------------------------------------------------- solution, reset


def solution(topic: course.Topic) -> str:
    ref = topic.file_in(course.SOLUTIONS)
    mine = topic.file_in(course.EXERCISES)
    text = ref.read_text()
    out = [f"# The reference solution, {ref.relative_to(course.ROOT)}:", "", text]
    if mine.is_file():
        diff = difflib.unified_diff(
            mine.read_text().splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"yours: {mine.relative_to(course.ROOT)}", tofile=f"reference: {ref.relative_to(course.ROOT)}",
        )  # fmt: skip
        out += ["", "# From your file to the reference (- yours, + reference):", "", "".join(diff) or "(identical)"]
    return "\n".join(out)


def reset(topic: course.Topic) -> str:
    from kata import stubs

    mine = topic.file_in(course.EXERCISES)
    ref = topic.file_in(course.SOLUTIONS)
    stub = stubs.make_stub(ref.read_text(), topic.name, str(ref))
    saved = ""
    if mine.is_file():
        saved = f"your file is saved as {backup(mine, topic.name).relative_to(course.ROOT)}; "
    mine.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(mine, stub)
    return f"{saved}{mine.relative_to(course.ROOT)} is the stub again"


# ---------------------------------------------------------------- solutions branch


def _git(*args: str, env: dict | None = None, input: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=course.ROOT, capture_output=True, text=True, env=env, input=input)
    if proc.returncode != 0:
        raise LearnerError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def solutions_branch(branch: str = "solutions") -> str:
    """Create or refresh `branch`: the current commit with exercises/ holding the reference
    solutions. Only plumbing: the working tree, the index and the current branch are untouched."""
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=course.ROOT, capture_output=True, text=True)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        raise LearnerError(f"{course.ROOT} is not a git repository: solutions-branch needs one (git init, then commit your work)")
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=course.ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        raise LearnerError("the repository has no commit yet: commit once, then make solutions-branch")
    head = head.stdout.strip()
    with_index = {**os.environ, "GIT_INDEX_FILE": str(STATE_DIR / "solutions-branch.index")}
    STATE_DIR.mkdir(exist_ok=True)
    try:
        _git("read-tree", head, env=with_index)  # a private index: the learner's stays as it is
        entries = []
        for t in course.topics():
            blob = _git("rev-parse", f"{head}:{t.file_in(course.SOLUTIONS).relative_to(course.ROOT).as_posix()}")
            entries.append(f"100644 {blob}\t{t.file_in(course.EXERCISES).relative_to(course.ROOT).as_posix()}")
        _git("update-index", "--index-info", env=with_index, input="\n".join(entries) + "\n")
        tree = _git("write-tree", env=with_index)
    finally:
        Path(with_index["GIT_INDEX_FILE"]).unlink(missing_ok=True)
    commit = _git("commit-tree", tree, "-p", head, "-m", f"Reference solutions in exercises/, built from {head[:12]}")
    _git("update-ref", f"refs/heads/{branch}", commit)
    return (f"branch '{branch}' now holds the reference solutions in exercises/ ({commit[:12]}, on top of {head[:12]}).\n"
            f"  git diff HEAD {branch} -- exercises/attention    # the answers against your work\n"
            f"  git checkout {branch}  /  git checkout -          # switch to the answers and back (commit or stash your work first)")  # fmt: skip


# ---------------------------------------------------------------- notebook


def notebook(topic: course.Topic) -> str:
    """Pair exercises/T/T.py with a Jupyter notebook (jupytext): edit either; `make check` syncs first."""
    mine = topic.file_in(course.EXERCISES)
    if not mine.is_file():
        raise LearnerError(f"no {mine.relative_to(course.ROOT)}: make reset topic={topic.name} restores the stub")
    saved = backup(mine, topic.name)
    nb = mine.with_suffix(".ipynb")
    if not nb.exists():
        _jupytext("--to", "ipynb", str(mine))
    _jupytext("--set-formats", "ipynb,py:light", str(nb))
    return (f"{nb.relative_to(course.ROOT)} is paired with {mine.relative_to(course.ROOT)} (your .py was saved as "
            f"{saved.relative_to(course.ROOT)} first).\nOpen it in Jupyter (with jupytext installed, saving updates the .py) or upload it "
            f"to Colab and download it back here; `make check topic={topic.name}` syncs the two before grading.")  # fmt: skip


def _jupytext(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "jupytext", "--quiet", *args], cwd=course.ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LearnerError(f"jupytext {' '.join(args)} failed: {proc.stderr.strip()}")


def sync_notebook(topic: course.Topic) -> str | None:
    """Before grading: if the learner paired a notebook, bring the .py up to date with it."""
    nb = topic.file_in(course.EXERCISES).with_suffix(".ipynb")
    if not nb.is_file() or "jupytext" not in nb.read_text():
        return None
    _jupytext("--sync", str(nb))
    return f"synced {nb.relative_to(course.ROOT)} with {nb.with_suffix('.py').relative_to(course.ROOT)}"


# ---------------------------------------------------------------- watch


def watch(topic: course.Topic, *, device: str, poll: bool | None = None, runs: int | None = None, clear: bool = True) -> int:
    """Grade now and again after every save of the learner's file, until Ctrl-C (or `runs` gradings)."""
    from kata import zygote

    zygote.start(topics=[topic])  # warm before the first save
    mine = topic.file_in(course.EXERCISES)
    if poll is None:
        poll = _events_unreliable(mine)
    done = 0

    def grade() -> None:
        nonlocal done
        if clear and sys.stdout.isatty():
            print("\033[2J\033[H", end="")
        print(f"[{time.strftime('%H:%M:%S')}] grading {mine.relative_to(course.ROOT)} (Ctrl-C stops watching)", flush=True)
        run_check(["check", topic.name, "--device", device])
        print(f"\nwatching {mine.relative_to(course.ROOT)} for saves ({'polling' if poll else 'file events'})...", flush=True)
        done += 1

    grade()
    try:
        for _ in _saves(mine, poll):
            if runs is not None and done >= runs:
                break
            grade()
            if runs is not None and done >= runs:
                break
    except KeyboardInterrupt:
        print("\nstopped watching")
    return 0


def run_check(argv: list[str]) -> None:
    """`kata check ...` in a judge forked from the warm zygote (torch, pytest and the graders
    already imported: the verdict comes sooner than a bare `import torch`), or in a fresh
    interpreter where fork is unavailable."""
    from kata import zygote

    if not zygote.available():
        subprocess.run([sys.executable, "-m", "kata", *argv], cwd=course.ROOT)
        return
    sys.stdout.flush()
    child = zygote.fork_judge(argv, output_fd=sys.stdout.fileno(), cwd=str(course.ROOT))
    try:
        child.wait()
    finally:
        child.kill()


def _events_unreliable(path: Path) -> bool:
    """WSL and network mounts often deliver no file events: poll there."""
    try:
        if "microsoft" in Path("/proc/version").read_text().lower():
            return True
    except OSError:
        pass
    return os.environ.get("KATA_WATCH_POLL") == "1"


def _saves(path: Path, poll: bool):
    """Yield once per save of `path` (editors often write twice: changes within 0.1 s count once)."""
    import queue

    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    events: queue.Queue = queue.Queue()
    target = str(path.resolve())

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            paths = {getattr(event, "src_path", ""), getattr(event, "dest_path", "")}
            if target in {str(Path(p).resolve()) for p in paths if p} and event.event_type in ("modified", "created", "moved"):
                events.put(time.monotonic())

    observer = (PollingObserver(timeout=0.5) if poll else Observer())
    observer.schedule(Handler(), str(path.parent), recursive=False)
    observer.start()
    try:
        last_digest = file_digest(path)
        while True:
            events.get()
            time.sleep(0.1)
            while not events.empty():
                events.get_nowait()
            digest = file_digest(path)
            if digest != last_digest:  # a touch without a change is not a save worth grading
                last_digest = digest
                yield
    finally:
        observer.stop()
        observer.join()
