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
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kata import checks, course
from kata.files import write_atomically
from kata.loader import LoadError, MissingTopicFile, load_module, resolve_impl, short_traceback

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


class Implementation:
    """A folder shaped like exercises/, whose topic modules are loaded by path, once each."""

    def __init__(self, root: Path):
        self.root = root
        self._loaded: dict[str, object] = {}

    def path(self, topic: str) -> Path:
        return course.get(topic).file_in(self.root)

    def load(self, topic: str):
        if topic not in self._loaded:
            path = self.path(topic)
            if not path.is_file():
                self._loaded[topic] = MissingTopicFile(f"no {topic}/{topic}.py in {self.root}")
            else:
                try:
                    self._loaded[topic] = load_module(path)
                except LoadError as exc:
                    self._loaded[topic] = exc
        found = self._loaded[topic]
        if isinstance(found, Exception):
            raise found
        return found


class InMemoryImplementation(Implementation):
    """Topic modules built in this process (a notebook's functions, see kata.notebook),
    graded with --impl=in-memory."""

    modules: dict[str, object] = {}

    def __init__(self):
        super().__init__(Path("<in-memory>"))

    def load(self, topic: str):
        if topic not in self.modules:
            raise MissingTopicFile(f"no {topic} functions were handed to the grader")
        return self.modules[topic]

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


@pytest.fixture(scope="session")
def impl(request) -> Implementation:
    if request.config.getoption("--impl") == "in-memory":
        return InMemoryImplementation()
    return Implementation(resolve_impl(request.config.getoption("--impl")))


@pytest.fixture(scope="session")
def reference() -> Implementation:
    """The reference solutions, for speed ratios."""
    return Implementation(course.SOLUTIONS)


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
    torch.manual_seed(CHECK_SEED)


# ---------------------------------------------------------------- verdicts


@dataclass
class Result:
    nodeid: str
    name: str
    verdict: str
    message: str
    points: float
    properties: dict


def _learner_files(config) -> set[Path]:
    """The files of the implementation being graded: a frame in one of them is the learner's."""
    if config.getoption("--impl") == "in-memory":
        return InMemoryImplementation.files()
    return {p.resolve() for p in resolve_impl(config.getoption("--impl")).glob("*/*.py")}


def _in_files(exc: BaseException, files: set[Path]) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve() in files


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(excinfo, learner_files: set[Path]) -> tuple[str, str]:
    """(verdict, message) for a check that raised."""
    exc = excinfo.value
    if excinfo.errisinstance(pytest.skip.Exception):
        return "skipped", str(exc.msg if hasattr(exc, "msg") else exc)
    if isinstance(exc, pytest.fail.Exception) and str(exc).startswith("Timeout"):
        # pytest-timeout's message: "Timeout (>2.0s from pytest-timeout)."
        limit = re.search(r">([\d.]+)s", str(exc))
        return "timed out", f"no result within the per-check limit of {float(limit[1]):g}s" if limit else str(exc)
    for e in _chain(exc):
        if isinstance(e, NotImplementedError) and _in_files(e, learner_files):
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
    return "crashed", f"your code raised an error:\n{short_traceback(exc, learner_files)}"


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
        verdict, message = classify(call.excinfo, _learner_files(item.config))
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
        path = self.config.getoption("--kata-json")
        if path:
            data = {
                "summary": summary(results),
                "passed": sum(r.verdict == "passed" for r in results),
                "total": sum(r.verdict != "skipped" for r in results),
                "checks": [r.__dict__ for r in results],
            }
            if self.token:
                data["token"] = self.token
            write_atomically(Path(path), json.dumps(data, indent=1, default=str))
        if self.config.getoption("--verdicts"):
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            tr.ensure_newline()
            all_pass = bool(results) and all(r.verdict in ("passed", "skipped") for r in results)
            tr.write_line(summary(results), bold=True, green=all_pass, red=not all_pass)


def summary(results: list[Result]) -> str:
    graded = [r for r in results if r.verdict != "skipped"]
    passed = sum(r.verdict == "passed" for r in graded)
    counts: dict[str, int] = {}
    for r in results:
        if r.verdict != "passed":
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
    detail = ", ".join(f"{n} {v}" for v, n in counts.items())
    return f"{passed} of {len(graded)} checks pass" + (f" ({detail})" if detail else "")
