"""The command line behind the Makefile (`kata --help` lists every verb): the learner's
`check`, `list`, `hint`, `watch`, `solution`, `solutions-branch`, `reset`, `notebook`; the
instructor's `grade`, `grade-one`, `gradescope`, `nbgrader`; the maintainer's `stubs`, `topics`.

Exit codes: 0 every check passes; 1 some check fails; 2 bad usage (unknown topic,
missing path, unavailable device).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from kata import course, engine

USAGE_ERROR = 2


def fail(message: str) -> int:
    print(f"kata: {message}", file=sys.stderr)
    return USAGE_ERROR


def cmd_check(args) -> int:
    from kata import zygote

    try:
        topic = course.get(args.topic)
    except course.UnknownTopic as exc:
        return fail(str(exc))
    # It imports torch for the executor while this process imports pytest and torch; lean:
    # one grading forks one executor, as soon as it can.
    zygote.start(full=False, topics=[topic])  # (nothing where fork is unavailable: executors are spawned)
    import pytest

    from kata.checks import pick_device
    from kata.loader import resolve_impl

    root = resolve_impl(args.impl)
    if not root.is_dir():
        return fail(f"no folder {args.impl}: impl is exercises, solutions or a folder shaped like exercises/")
    if not topic.file_in(root).is_file():
        return fail(f"no {topic.name}/{topic.name}.py in {root}: a submission holds <topic>/<topic>.py")
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else []
    unknown = [name for name in only if f"def {name}(" not in topic.grader.read_text()]
    if unknown:
        return fail(f"no check named {', '.join(unknown)} in {topic.grader.name}")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        return fail(str(exc))
    own_work = root == course.EXERCISES
    if own_work:
        from kata import learner

        try:
            synced = learner.sync_notebook(topic)
        except learner.LearnerError as exc:
            return fail(str(exc))
        if synced:
            print(synced)
    shown = root.relative_to(course.ROOT) if root.is_relative_to(course.ROOT) else root
    print(f"Grading {shown / topic.name / (topic.name + '.py')} on {device.type}: {topic.title}")
    extra = ["--verdicts", "-qq", "--no-header", "--no-summary", "-o", "console_output_style=classic"]
    with tempfile.TemporaryDirectory() as tmp:
        # A full check of the learner's own file is recorded for `kata list`.
        results = Path(args.json) if args.json else Path(tmp) / "results.json"
        extra.append(f"--kata-json={results}")
        code = pytest.main(engine.grader_args(topic, args.impl, device.type, *extra, only=only, timeout=args.timeout))
        data = json.loads(results.read_text()) if results.is_file() else None
        if own_work and not only and data:
            learner.record_check(topic.name, data)
    if data and code != 0 and not data.get("unloaded"):
        from kata import mistakes

        lines = mistakes.describe(topic.name, mistakes.diagnose_topic(topic.name, data["checks"]))
        if lines:
            print("\n" + "\n".join(lines))
    return 0 if code == 0 else 1


def cmd_stubs(args) -> int:
    from kata import stubs

    if args.check:
        bad = stubs.drifted()
        for path in bad:
            print(f"{path.relative_to(course.ROOT)} is out of step with its solution: run `make stubs`")
        return 1 if bad else 0
    try:
        names = [course.get(n.strip()).name for n in args.topics.split(",") if n.strip()]
    except course.UnknownTopic as exc:
        print(exc, file=sys.stderr)
        return 2
    for line in stubs.write_stubs(names) or ["stubs are up to date"]:
        print(line)
    return 0


def cmd_grade(args) -> int:
    from kata import grade

    submissions = Path(args.submissions).expanduser()
    if not submissions.is_dir():
        return fail(f"no folder {args.submissions}: submissions is a folder with one entry (folder or .zip) per student")
    setup = _grading_setup(args, local=not args.cluster)
    if isinstance(setup, str):
        return fail(setup)
    topics, hidden, limits = setup
    jobs = args.jobs or os.cpu_count() or 1
    try:
        if args.cluster:
            from kata import cluster

            return cluster.grade_class(submissions, Path(args.out), topics, address=args.cluster, limits=limits,
                                       require_sandbox=args.require_sandbox, hidden=hidden, force=args.force)  # fmt: skip
        return grade.grade_class(submissions, Path(args.out), topics, jobs=jobs, limits=limits, hidden=hidden, force=args.force)
    except RuntimeError as exc:
        print(f"kata: {exc}", file=sys.stderr)
        return 1


def _grading_setup(args, local: bool = True):
    """(topics, hidden, limits) from the options `grade` and `grade-one` share, or an error
    message. `local`: the gradings run here (not on a cluster's workers, which start their
    own zygote and probe their own sandbox)."""
    from kata import grade, zygote

    try:
        names = [n.strip() for n in args.topics.split(",") if n.strip()] or course.topic_names()
        topics = [course.get(n) for n in names]
        # Now, before this process imports torch (pick_device): the zygote's own imports run
        # beside it, not after it (a second of every class's grading on 2 cores).
        if local:
            zygote.start(topics=topics)
        from kata.checks import pick_device

        device = pick_device(args.device).type
    except (course.UnknownTopic, ValueError) as exc:
        return str(exc)
    hidden = Path(args.hidden).expanduser().resolve() if args.hidden else None
    if hidden is not None and not hidden.is_dir():
        return f"no folder {args.hidden}: hidden is a folder of grader modules named test_<topic>*.py"
    limits = grade.Limits(
        check_timeout=args.timeout, student_timeout=args.student_timeout, memory_mb=args.memory_mb, device=device
    )
    if local and getattr(args, "require_sandbox", None) is not None:
        from kata import sandbox

        missing = sandbox.probe()
        if missing and args.require_sandbox:
            return f"--require-sandbox: {missing}; not grading"
        if missing:
            print(f"kata: no kernel sandbox: {missing}; grading with the Python-level write guard and limits only", file=sys.stderr)
        limits.sandbox = missing is None
    return topics, hidden, limits


def cmd_grade_one(args) -> int:
    from kata import grade

    submission = Path(args.submission).expanduser()
    if not submission.is_dir():
        return fail(f"no folder {args.submission}")
    setup = _grading_setup(args)
    if isinstance(setup, str):
        return fail(setup)
    topics, hidden, limits = setup
    return grade.grade_one(submission, Path(args.results), topics, limits, hidden)


def cmd_gradescope(args) -> int:
    from kata import gradescope

    setup = _grading_setup(args)
    if isinstance(setup, str):
        return fail(setup)
    topics, hidden, _ = setup
    out = gradescope.build_bundle(Path(args.out), topics, hidden)
    print(f"wrote {out}: upload it as the assignment's autograder (configuration: zip file upload)")
    return 0


def cmd_nbgrader(args) -> int:
    from kata import nbgrader_course

    try:
        topics = [course.get(n.strip()) for n in args.topics.split(",") if n.strip()] or list(course.topics())
    except course.UnknownTopic as exc:
        return fail(str(exc))
    try:
        written = nbgrader_course.build(Path(args.out), topics)
    except RuntimeError as exc:
        print(f"kata: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"then: cd {args.out} && nbgrader generate_assignment TOPIC  (see README, 'nbgrader')")
    return 0


def cmd_report(args) -> int:
    from kata import report

    return report.main(args.gradebook, args.similarity)


def cmd_similarity(args) -> int:
    from kata import similarity

    return similarity.main(args.submissions, args.out, args.topics, args.threshold)


def _learner_verb(args) -> int:
    """list, hint, watch, solution, solutions-branch, reset and notebook (kata/learner.py)."""
    from kata import learner

    try:
        if args.command == "list":
            print(learner.list_course())
        elif args.command == "solutions-branch":
            print(learner.solutions_branch())
        else:
            topic = course.get(args.topic)
            if args.command == "hint":
                print(learner.hint(topic, args.n))
            elif args.command == "solution":
                print(learner.solution(topic))
            elif args.command == "reset":
                print(learner.reset(topic))
            elif args.command == "notebook":
                print(learner.notebook(topic))
            elif args.command == "watch":
                from kata.checks import pick_device

                return learner.watch(topic, device=pick_device(args.device).type, poll=args.poll or None, runs=args.runs)
    except (course.UnknownTopic, learner.LearnerError, ValueError) as exc:
        return fail(str(exc))
    return 0


def cmd_topics(args) -> int:
    for t in course.topics():
        print(f"{t.name:<20} level {t.level}  {t.title}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["judge"]:
        # Internal: the judge of one grading (kata.grade forks it from the zygote), pytest's
        # arguments as they are.
        import pytest

        return int(pytest.main(argv[1:]))
    parser = argparse.ArgumentParser(prog="kata", description="Auto-graded PyTorch katas.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="grade one topic")
    p.add_argument("topic", nargs="?", default="", help="topic name, e.g. attention")
    p.add_argument("--impl", default="exercises", help="exercises (default), solutions, or a folder shaped like exercises/")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--json", default=None, help="also write per-check results to this JSON file")
    p.add_argument("--timeout", type=float, default=None, help="per-check limit in seconds (default: course.toml's)")
    p.add_argument("--only", default="", help="comma-separated check names to run, e.g. test_speed,test_matches_torch")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("stubs", help="regenerate exercises/ stubs from solutions/")
    p.add_argument("--check", action="store_true", help="only report stubs that are out of step; exit 1 if any")
    p.add_argument("--topics", default="", help="comma-separated topics whose stubs to write (default: every topic)")
    p.set_defaults(func=cmd_stubs)

    def grading_options(p):
        p.add_argument("--topics", default="", help="comma-separated topics to grade (default: every topic)")
        p.add_argument("--hidden", default=None, help="folder of extra grader modules test_<topic>*.py, run only when grading")
        p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
        p.add_argument("--timeout", type=float, default=None, help="per-check limit in seconds (default: course.toml's)")
        p.add_argument("--student-timeout", type=float, default=900.0, help="limit for all of one student's topics (default 900 s)")
        p.add_argument("--memory-mb", type=int, default=4096, help="address-space limit of each grading process on the CPU (default 4096)")
        p.add_argument("--require-sandbox", action="store_true", default=False,
                       help="refuse to grade where the kernel cannot confine the students' code (see kata/sandbox.py)")  # fmt: skip

    p = sub.add_parser("grade", help="grade a whole class of submissions into a gradebook (see kata/grade.py)")
    p.add_argument("submissions", help="folder with one entry per student: a folder shaped like exercises/, or a .zip of one")
    p.add_argument("--out", default="gradebook", help="output folder (default gradebook/)")
    p.add_argument("--jobs", type=int, default=0, help="students graded in parallel (default: the number of cores)")
    p.add_argument("--force", action="store_true", help="grade again students already in the gradebook")
    p.add_argument("--cluster", default=None, help="a Dask scheduler's address (tcp://host:8786): grade there, one task per student and topic (kata/cluster.py)")
    grading_options(p)
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("grade-one", help="grade one submission into a Gradescope results.json (used by run_autograder)")
    p.add_argument("submission", help="a folder shaped like exercises/, or holding <topic>.py files")
    p.add_argument("--results", required=True, help="where to write results.json")
    grading_options(p)
    p.set_defaults(func=cmd_grade_one)

    p = sub.add_parser("gradescope", help="build the Gradescope autograder zip")
    p.add_argument("--out", default="dist/gradescope-autograder.zip", help="the zip to write (default dist/gradescope-autograder.zip)")
    grading_options(p)
    p.set_defaults(func=cmd_gradescope)

    p = sub.add_parser("nbgrader", help="build an nbgrader course folder from the katas")
    p.add_argument("--out", default="build/nbgrader", help="the course folder (default build/nbgrader)")
    p.add_argument("--topics", default="", help="comma-separated topics (default: every topic)")
    p.set_defaults(func=cmd_nbgrader)

    p = sub.add_parser("report", help="the class report: GRADEBOOK/report.html from a gradebook (see kata/report.py)")
    p.add_argument("gradebook", nargs="?", default="gradebook", help="the folder `kata grade` wrote (default gradebook/)")
    p.add_argument("--similarity", default=None, help="a similarity.csv to include (default: GRADEBOOK/similarity.csv when there)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("similarity", help="copy detection: similar pairs of submissions per topic (see kata/similarity.py)")
    p.add_argument("submissions", help="folder with one entry per student, as for grade")
    p.add_argument("--out", default="gradebook", help="where similarity.csv and similarity.html go (default gradebook/)")
    p.add_argument("--topics", default="", help="comma-separated topics to compare (default: every topic)")
    p.add_argument("--threshold", type=float, default=0.8, help="the score from which similarity.html shows a pair's passages (default 0.8)")
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("list", help="the course in order with your progress (no grading)")
    p.set_defaults(func=_learner_verb)
    p = sub.add_parser("hint", help="the next hint for a topic")
    p.add_argument("topic", nargs="?", default="")
    p.add_argument("--n", default=None, help="'all' shows every hint")
    p.set_defaults(func=_learner_verb)
    p = sub.add_parser("watch", help="grade again every time you save the topic's file (Ctrl-C stops)")
    p.add_argument("topic", nargs="?", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--poll", action="store_true", help="poll the file instead of waiting for file events (WSL, network mounts)")
    p.add_argument("--runs", type=int, default=None, help=argparse.SUPPRESS)  # stop after N gradings (self-tests)
    p.set_defaults(func=_learner_verb)
    p = sub.add_parser("solution", help="the reference solution and a diff from your file to it")
    p.add_argument("topic", nargs="?", default="")
    p.set_defaults(func=_learner_verb)
    p = sub.add_parser("solutions-branch", help="create or refresh the git branch 'solutions' (exercises/ holds the answers)")
    p.set_defaults(func=_learner_verb)
    p = sub.add_parser("reset", help="restore a topic's stub, saving your file under .kata/backups/ first")
    p.add_argument("topic", nargs="?", default="")
    p.set_defaults(func=_learner_verb)
    p = sub.add_parser("notebook", help="pair the topic's file with a Jupyter notebook (jupytext)")
    p.add_argument("topic", nargs="?", default="")
    p.set_defaults(func=_learner_verb)

    p = sub.add_parser("topics", help="list the topics in course order")
    p.set_defaults(func=cmd_topics)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
