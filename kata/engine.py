"""The process model, as the front door (kata.cli), the class grader (kata.grade), the
notebook course and the self-tests all use it: a judge process runs pytest with the
graders (kata.plugin), and each grading's learner code runs in an executor
(kata.executor) forked from a warm zygote (kata.zygote), confined by kata.sandbox when
grading submissions.
"""

from __future__ import annotations

from kata import course


def grader_args(
    topic: course.Topic, impl: str, device: str, *extra: str, only: list[str] = (), timeout: float | None = None
) -> list[str]:
    """pytest arguments that grade `topic` in `impl`; `only` narrows it to some check functions,
    `timeout` replaces the topic's per-check limit."""
    targets = [f"{topic.grader}::{name}" for name in only] or [str(topic.grader)]
    return [
        *targets,
        f"--impl={impl}",
        f"--device={device}",
        f"--rootdir={course.ROOT}",
        f"--config-file={course.ROOT / 'pyproject.toml'}",
        f"--timeout={timeout or topic.timeout:g}",
        "-p", "no:cacheprovider",
        # Only the plugins a grading uses: installed ones (nbgrader brings anyio's, say) cost
        # 0.4 s of every start-up, a third of a warm grading.
        "--disable-plugin-autoload", "-p", "pytest_timeout", "-p", "kata.plugin",
        # Log capture, and the garbage collections that hunt unraisable exceptions, are of
        # no use to a grading (0.2 s of a warm one).
        "-p", "no:logging", "-p", "no:unraisableexception", "-p", "no:threadexception",
        # kata.plugin is imported before pytest starts (the zygote preloads it): no assert rewriting needed there.
        "-W", "ignore::pytest.PytestAssertRewriteWarning",
        # Verdicts carry their own messages: pytest's formatting of every failing check's
        # traceback (through torch's frames) cost 30 ms a check.
        "--tb=no",
        *extra,
    ]  # fmt: skip


