"""The pytest plugin behind every grader, loaded by the root conftest.py.

Options: --impl (exercises, solutions or a folder shaped like exercises/),
--device (auto, cpu, cuda, mps), --verdicts (learner-facing report instead of
pytest's) and --kata-json PATH (machine-readable results, for self-tests and grading).
Fixtures: impl, reference, device.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kata import checks, course, harness
from kata.files import write_atomically
from kata.executor import Server
from kata.judge import Executor, ExecutorDied, LearnerError, LoadTimeout
from kata.loader import LoadError, MissingTopicFile, resolve_impl

VERDICT_LABELS = {
    "passed": "PASS",
    "wrong": "WRONG",
    "not started": "NOT STARTED",
    "broke a rule": "BROKE A RULE",
    "too slow": "TOO SLOW",
    "crashed": "CRASHED",
    "timed out": "TIMED OUT",
    "missing": "MISSING",
    "skipped": "SKIPPED",
    "error": "ERROR",
}


def pytest_addoption(parser):
    group = parser.getgroup("kata")
    group.addoption("--impl", default="exercises", help="exercises, solutions, or a folder shaped like exercises/")
    group.addoption("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    group.addoption("--verdicts", action="store_true", help="print one learner-facing verdict per check")
    group.addoption("--kata-json", default=None, help="write per-check results to this JSON file")


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): points this check is worth when grading (default 1)")
    if config.pluginmanager.get_plugin("kata-verdicts") is None:
        # The class grader (kata.grade) passes a secret to stamp the results file with; it
        # leaves the environment before any learner code is loaded, so a forged file lacks it.
        token = os.environ.pop("KATA_RESULT_TOKEN", None)
        config.pluginmanager.register(VerdictReporter(config, token), "kata-verdicts")


class Executors:
    """The executor processes of one grading session, one per topic, shared by the learner's
    implementation and the reference (which speed checks time beside it)."""

    def __init__(self, config):
        self.config = config
        self.by_topic: dict[str, Executor] = {}

    def device(self) -> str:
        try:
            return str(checks.pick_device(self.config.getoption("--device")))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None

    def get(self, topic: str) -> Executor:
        if topic not in self.by_topic:
            self.by_topic[topic] = self._make(course.get(topic))
        return self.by_topic[topic]

    def _make(self, topic: course.Topic) -> Executor:
        grader = None
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and file.endswith(topic.grader.name) and Path(file).resolve() == topic.grader.resolve():
                grader = (name, str(topic.grader))
                break
        if self.config.getoption("--impl") == "in-memory":
            server = Server()
            server.learner_files = InMemoryImplementation.files()
            return Executor(forbidden=topic.forbidden, device=self.device(), grader=None, local=server)
        return Executor(forbidden=topic.forbidden, device=self.device(), grader=grader, launcher=_launcher(self.config))

    def seed(self, value: int) -> None:
        for ex in self.by_topic.values():
            ex.seed(value)

    def close(self) -> None:
        for ex in self.by_topic.values():
            ex.close()


def _launcher(config):
    """How this session starts executors: forked from the zygote (or spawned where fork is
    unavailable), confined as the environment asks (kata.grade sets it for submissions)."""
    from kata import judge, sandbox, zygote

    options = sandbox.options_from_env()
    if not zygote.available():
        return lambda: judge.spawn_executor(options)
    return zygote.launcher(options)


class Implementation:
    """A folder shaped like exercises/, whose topic modules are loaded by path, once each,
    in the topic's executor: this process gets a Remote of the module, never the module."""

    learner = True

    def __init__(self, root: Path, executors: Executors):
        self.root = root
        self.executors = executors
        self._loaded: dict[str, object] = {}

    def path(self, topic: str) -> Path:
        return course.get(topic).file_in(self.root)

    def load(self, topic: str):
        if topic not in self._loaded:
            path = self.path(topic)
            missing = f"no {topic}/{topic}.py in {self.root}"
            try:
                if not path.is_file():
                    raise MissingTopicFile(missing)
                limit = self.executors.config.getoption("timeout", None) or course.get(topic).timeout
                self._loaded[topic] = self.executors.get(topic).load(path, learner=self.learner, missing=missing, timeout=limit)
            except (LoadError, MissingTopicFile) as exc:
                self._loaded[topic] = exc
            except ExecutorDied as exc:
                how = f"the process running it ended while importing it ({exc.status})" if exc.status else str(exc)
                self._loaded[topic] = LoadError(f"{path} could not be loaded: {how}")
            except LoadTimeout as exc:
                self._loaded[topic] = LoadError(f"{path} could not be loaded: it did not finish loading within {exc} s (an endless loop at import?)")
        found = self._loaded[topic]
        if isinstance(found, Exception):
            raise found
        return found


class ReferenceImplementation(Implementation):
    learner = False


class InMemoryImplementation(Implementation):
    """Topic modules built in this process (a notebook's functions, see kata.notebook),
    graded with --impl=in-memory. The notebook's kernel is where they live, so here the
    executor is this process too: an nbgrader course grades inside the student's kernel."""

    modules: dict[str, object] = {}

    def __init__(self, executors: Executors):
        super().__init__(Path("<in-memory>"), executors)

    def load(self, topic: str):
        if topic not in self.modules:
            raise MissingTopicFile(f"no {topic} functions were handed to the grader")
        return self.executors.get(topic).adopt(self.modules[topic])

    @classmethod
    def files(cls) -> set[Path]:
        """The files (notebook cells) the modules' functions were written in."""
        found = set()
        for module in cls.modules.values():
            for obj in vars(module).values():
                for fn in [obj, *vars(obj).values()] if isinstance(obj, type) else [obj]:
                    code = getattr(fn, "__code__", None)
                    if code is not None:
                        found.add(Path(code.co_filename).resolve())
        return found


def _executors(config) -> Executors:
    if getattr(config, "kata_executors", None) is None:
        config.kata_executors = Executors(config)
    return config.kata_executors


def _implementation(config) -> Implementation:
    if getattr(config, "kata_impl", None) is None:
        executors = _executors(config)
        impl = config.getoption("--impl")
        config.kata_impl = InMemoryImplementation(executors) if impl == "in-memory" else Implementation(resolve_impl(impl), executors)
    return config.kata_impl


def pytest_unconfigure(config):
    executors = getattr(config, "kata_executors", None)
    if executors is not None:
        executors.close()


def _topic_of(item) -> str | None:
    """The topic a check grades: graders/test_<topic>.py, or an instructor's test_<topic>*.py."""
    stem = Path(item.path).stem
    names = [t for t in course.topic_names() if stem == f"test_{t}" or stem.startswith(f"test_{t}_")]
    return max(names, key=len) if names else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """A file that cannot be loaded is one verdict, not one per check: it is loaded before
    any check runs, and if it fails, its checks are not run at all (kata.plugin.Result
    'error' or 'missing', counted against every check of the topic)."""
    if not _grading(config):
        return
    reporter = config.pluginmanager.get_plugin("kata-verdicts")
    keep = []
    failed: dict[str, tuple[str, str, int]] = {}
    for item in items:
        topic = _topic_of(item)
        if topic is not None and topic not in failed:
            try:
                _implementation(config).load(topic)
            except MissingTopicFile as exc:
                failed[topic] = ("missing", str(exc), 0)
            except LoadError as exc:
                failed[topic] = ("error", str(exc), 0)
        if topic in failed:
            verdict, message, n = failed[topic]
            failed[topic] = (verdict, message, n + 1)
        else:
            keep.append(item)
    if failed:
        items[:] = keep
        for topic, (verdict, message, n) in failed.items():
            reporter.file_failed(topic, verdict, message, n)
    for item in items:
        # A verdict carries its own message (pytest_runtest_makereport): pytest's formatting
        # of the failure's traceback, through torch's frames, would be thrown away.
        item.repr_failure = _exception_only


def _exception_only(excinfo, style=None) -> str:
    return excinfo.exconly()


@pytest.fixture(scope="session")
def executors(request) -> Executors:
    return _executors(request.config)


@pytest.fixture(scope="session")
def impl(request) -> Implementation:
    return _implementation(request.config)


@pytest.fixture(scope="session")
def reference(request, executors) -> Implementation:
    """The reference solutions, for speed ratios, in the same executor as the learner's code."""
    if request.config.getoption("--impl") == "in-memory":
        return InMemoryReference(executors)
    return ReferenceImplementation(course.SOLUTIONS, executors)


class InMemoryReference(ReferenceImplementation):
    """In a notebook's kernel, the reference solution is loaded there too."""

    def __init__(self, executors: Executors):
        super().__init__(course.SOLUTIONS, executors)

    def load(self, topic: str):
        if topic not in self._loaded:
            from kata.loader import load_module

            self._loaded[topic] = self.executors.get(topic).adopt(load_module(self.path(topic)))
        return self._loaded[topic]


@pytest.fixture(scope="session")
def device(request):
    try:
        device = checks.pick_device(request.config.getoption("--device"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if device.type == "cpu":
        # Checks run many small ops; on a busy CPU torch's parallel regions stall on
        # descheduled threads (a 10 ms generate took 1.5 s with 2 threads under load).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    return device


# The global random state every check starts from. Graders draw their inputs from their own
# seeded generators; this is for the learner's code: a submission that draws random numbers
# (an init, a dropout) gets the same verdict on every run, and whatever checks ran before.
CHECK_SEED = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    random.seed(CHECK_SEED)
    harness.seed_torch(CHECK_SEED)
    executors = getattr(item.config, "kata_executors", None)
    if executors is not None:
        executors.seed(CHECK_SEED)


# ---------------------------------------------------------------- verdicts


@dataclass
class Result:
    nodeid: str
    name: str
    verdict: str
    message: str
    points: float
    properties: dict


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(excinfo) -> tuple[str, str]:
    """(verdict, message) for a check that raised."""
    exc = excinfo.value
    if excinfo.errisinstance(pytest.skip.Exception):
        return "skipped", str(exc.msg if hasattr(exc, "msg") else exc)
    if isinstance(exc, pytest.fail.Exception) and str(exc).startswith("Timeout"):
        # pytest-timeout's message: "Timeout (>2.0s from pytest-timeout)."
        limit = re.search(r">([\d.]+)s", str(exc))
        return "timed out", f"no result within the per-check limit of {float(limit[1]):g}s" if limit else str(exc)
    for e in _chain(exc):
        if isinstance(e, LearnerError) and isinstance(e, NotImplementedError) and e.from_learner:
            return "not started", f"{e or 'a function'} raises NotImplementedError"
    for e in _chain(exc):
        if isinstance(e, MissingTopicFile):
            return "missing", str(e)
        if isinstance(e, LoadError):
            return "crashed", str(e)
    if isinstance(exc, checks.RuleBroken):
        return "broke a rule", str(exc)
    if isinstance(exc, checks.TooSlow):
        return "too slow", str(exc)
    if isinstance(exc, AssertionError):
        return "wrong", str(exc) or "an assertion failed"
    for e in _chain(exc):
        if isinstance(e, LearnerError):
            return "crashed", f"your code raised an error:\n{e.learner_traceback}"
        if isinstance(e, ExecutorDied):
            return "crashed", str(e)
    return "crashed", f"the grader raised an error:\n  {type(exc).__name__}: {exc}"


def _grading(config) -> bool:
    """Verdicts are only worked out for a grading run, not for the project's self-tests."""
    return bool(config.getoption("--verdicts") or config.getoption("--kata-json"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not _grading(item.config) or call.when == "teardown" or (call.when == "setup" and report.passed):
        return
    if call.excinfo is None:
        verdict, message = "passed", ""
    else:
        verdict, message = classify(call.excinfo)
    marker = item.get_closest_marker("points")
    report.kata = Result(
        nodeid=item.nodeid,
        # Checks from outside graders/ are an instructor's hidden ones (kata grade --hidden).
        name=item.name if Path(item.path).parent == course.GRADERS else f"hidden: {item.name}",
        verdict=verdict,
        message=message,
        points=float(marker.args[0]) if marker else 1.0,
        properties=dict(item.user_properties),
    )
    if item.config.getoption("--verdicts") and verdict != "passed":
        report.longrepr = message


def pytest_report_teststatus(report, config):
    # With --verdicts, pytest's own progress letters are silenced; pytest_runtest_logreport prints instead.
    if config.getoption("--verdicts") and hasattr(report, "kata"):
        return report.outcome, "", ""
    return None


class VerdictReporter:
    """Collects every check's Result; prints verdicts and the summary, writes the JSON."""

    def __init__(self, config, token: str | None = None):
        self.config = config
        self.token = token
        self.results: list[Result] = []
        self.last_message = ""
        self.unloaded: list[dict] = []  # topics whose file could not be loaded: no check ran

    def file_failed(self, topic: str, verdict: str, message: str, checks: int) -> None:
        self.unloaded.append({"topic": topic, "verdict": verdict, "message": message, "checks": checks})
        if self.config.getoption("--verdicts"):
            name = f"{topic}/{topic}.py"
            self.print_result(Result(nodeid=name, name=name, verdict=verdict, message=message, points=0.0, properties={}))

    def pytest_runtest_logreport(self, report):
        result = getattr(report, "kata", None)
        if result is None:
            return
        self.results.append(result)
        if self.config.getoption("--verdicts"):
            self.print_result(result)

    def print_result(self, result: Result) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        colour = "green" if result.verdict == "passed" else "yellow" if result.verdict in ("not started", "skipped") else "red"
        tr.ensure_newline()
        tr.write(f"{VERDICT_LABELS[result.verdict]:<13}", **{colour: True})
        message = result.message
        if "\n" not in message:
            tr.write_line(f"{result.name}: {message}" if message else result.name)
            return
        tr.write_line(result.name)
        # A long error shared by many checks (a file that does not load) is shown once.
        if message == self.last_message:
            message = "(the same error as above)"
        self.last_message = result.message
        for line in message.splitlines():
            tr.write_line(f"{'':13}{line}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        results = self.results
        unrun = sum(u["checks"] for u in self.unloaded)
        line = summary(results, unrun)
        path = self.config.getoption("--kata-json")
        if path:
            data = {
                "summary": line,
                "passed": sum(r.verdict == "passed" for r in results),
                "total": sum(r.verdict != "skipped" for r in results) + unrun,
                "checks": [r.__dict__ for r in results],
            }
            if self.unloaded:
                data["unloaded"] = self.unloaded
            if self.token:
                data["token"] = self.token
            write_atomically(Path(path), json.dumps(data, indent=1, default=str))
        if self.config.getoption("--verdicts"):
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            tr.ensure_newline()
            all_pass = bool(results) and not unrun and all(r.verdict in ("passed", "skipped") for r in results)
            tr.write_line(line, bold=True, green=all_pass, red=not all_pass)


def summary(results: list[Result], unrun: int = 0) -> str:
    """`N of M checks pass (...)`; `unrun` checks did not run because their file could not be loaded."""
    graded = [r for r in results if r.verdict != "skipped"]
    passed = sum(r.verdict == "passed" for r in graded)
    if unrun:
        return f"{passed} of {len(graded) + unrun} checks pass ({unrun} not run: the file could not be loaded)"
    counts: dict[str, int] = {}
    for r in results:
        if r.verdict != "passed":
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
    detail = ", ".join(f"{n} {v}" for v, n in counts.items())
    return f"{passed} of {len(graded)} checks pass" + (f" ({detail})" if detail else "")
