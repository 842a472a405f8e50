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
        # Not used by graders; leaving them out keeps a check's start-up short.
        "-p", "no:benchmark",
        *extra,
    ]  # fmt: skip


