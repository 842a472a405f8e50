"""`make bench-watch`: how long `make watch` takes from a save to the new verdict.

    .venv/bin/python benchmarks/bench_watch.py [--topic attention] [--saves 5]

Runs `kata watch` in a private copy of the suite (the learner's own file is not touched),
saves the topic's file `--saves` times, alternating the reference solution and the stub,
and times each save until the watcher prints the summary line. Prints the median and the
spread, next to a bare `python -c "import torch"` measured the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ["kata", "graders", "solutions", "exercises", "course.toml", "pyproject.toml", "conftest.py"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", default="attention")
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "suite"
        copy.mkdir()
        for name in COPIED:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / name)
        mine = copy / "exercises" / args.topic / f"{args.topic}.py"
        versions = [(ROOT / "solutions" / args.topic / f"{args.topic}.py").read_text(), mine.read_text()]
        env = {**os.environ, "PYTHONPATH": str(copy)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "kata", "watch", args.topic, "--device", "cpu", "--runs", str(args.saves + 1)],
            cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        summaries: list[float] = []
        lines: list[str] = []

        def read():
            for line in proc.stdout:
                lines.append(line)
                if " checks pass" in line:
                    summaries.append(time.perf_counter())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while not summaries:  # the first grading, at start-up
            time.sleep(0.05)
            if proc.poll() is not None:
                sys.exit("".join(lines))
        time.sleep(1.0)
        latencies = []
        for i in range(args.saves):
            seen = len(summaries)
            saved = time.perf_counter()
            mine.write_text(versions[i % 2] + f"\n# save {i}\n")
            while len(summaries) == seen:
                time.sleep(0.005)
                if proc.poll() is not None:
                    sys.exit("".join(lines))
            latencies.append(summaries[-1] - saved)
            time.sleep(0.5)
        proc.wait(timeout=60)
    bare = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        bare.append(time.perf_counter() - start)
    for label, times in (("the solution (every check runs)", latencies[0::2]), ("the stub", latencies[1::2])):
        print(f"make watch topic={args.topic}, saving {label}: save to verdict median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}, {len(times)} saves)")  # fmt: skip
    print(f"python -c 'import torch': median {statistics.median(bare):.2f} s")


if __name__ == "__main__":
    main()
