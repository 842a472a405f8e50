"""`make bench-grade`: grading throughput of `kata grade` against `nbgrader autograde` on
the same synthetic class (correct, partly wrong and broken submissions of one topic).

    .venv/bin/python benchmarks/bench_grade.py [--students 8] [--topic attention] [--jobs N]

Prints submissions per minute for each and their ratio. Both are timed end to end as an
instructor runs them (kata grade includes its one reference run per topic; nbgrader's
generate_assignment is set-up and not timed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kata import course  # noqa: E402
from kata.nbgrader_course import fill_in  # noqa: E402
from tests.grading import examples, mutant_source  # noqa: E402


def synthetic_class(topic: str, n: int) -> dict[str, str]:
    """n students cycling through: the solution, each mutant (partly wrong), the stub, a syntax error."""
    solution = course.get(topic).file_in(course.SOLUTIONS).read_text()
    mutants = [path for t, path in examples("mutants") if t == topic]
    kinds = [solution, *(mutant_source(m) for m in mutants[:3]), course.get(topic).file_in(course.EXERCISES).read_text(), "def broken(:\n"]
    return {f"student{i:03d}": kinds[i % len(kinds)] for i in range(n)}


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--topic", default="attention")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    students = synthetic_class(args.topic, args.students)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        submissions = tmp / "submissions"
        for sid, code in students.items():
            (submissions / sid / args.topic).mkdir(parents=True)
            (submissions / sid / args.topic / f"{args.topic}.py").write_text(code)
        kata_s = timed([sys.executable, "-m", "kata", "grade", str(submissions), "--out", str(tmp / "gradebook"),
                        "--topics", args.topic, "--jobs", str(args.jobs)], ROOT)  # fmt: skip

        nbc = tmp / "course"
        subprocess.run([sys.executable, "-m", "kata", "nbgrader", "--out", str(nbc), "--topics", args.topic], cwd=ROOT, check=True, capture_output=True)
        timed([sys.executable, "-m", "nbgrader", "generate_assignment", args.topic, "--force"], nbc)
        release = nbc / "release" / args.topic / f"{args.topic}.ipynb"
        for sid, code in students.items():
            fill_in(release, code, nbc / "submitted" / sid / args.topic / f"{args.topic}.ipynb")
        nb_s = timed([sys.executable, "-m", "nbgrader", "autograde", args.topic, "--create"], nbc)
        shutil.rmtree(nbc, ignore_errors=True)

    n = len(students)
    print(f"{n} submissions of {args.topic} on {os.cpu_count()} cores")
    print(f"kata grade --jobs {args.jobs}:  {kata_s:6.1f} s  {60 * n / kata_s:6.1f} submissions/min")
    print(f"nbgrader autograde:     {nb_s:6.1f} s  {60 * n / nb_s:6.1f} submissions/min")
    print(f"kata grade / nbgrader throughput: {nb_s / kata_s:.2f}x")


if __name__ == "__main__":
    main()
