"""`make bench-cluster`: grading throughput on a Dask cluster of local workers against the
local pool, on the same synthetic class (benchmarks/bench_grade.py's).

    .venv/bin/python benchmarks/bench_cluster.py [--students 16] [--topic attention] [--workers 2]

Starts a `dask scheduler` and `--workers` `dask worker` processes (one grading thread
each) on 127.0.0.1, then times, end to end as an instructor runs them: `kata grade
--jobs WORKERS` here, and `kata grade --cluster` twice (the first run starts each worker's
zygote, the second finds it warm). Prints submissions per minute and the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_grade import synthetic_class, timed  # noqa: E402
from tests.grading import Cluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=16)
    parser.add_argument("--topic", default="attention")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        submissions = tmp / "submissions"
        for sid, code in synthetic_class(args.topic, args.students).items():
            (submissions / sid / args.topic).mkdir(parents=True)
            (submissions / sid / args.topic / f"{args.topic}.py").write_text(code)
        grade = [sys.executable, "-m", "kata", "grade", str(submissions), "--topics", args.topic]
        local_s = timed([*grade, "--out", str(tmp / "local"), "--jobs", str(args.workers)], ROOT)
        cluster = Cluster(tmp)
        try:
            started = time.perf_counter()
            cluster.start_scheduler()
            cluster.start_workers(args.workers)
            startup_s = time.perf_counter() - started
            cold_s = timed([*grade, "--out", str(tmp / "cold"), "--cluster", cluster.address], ROOT)
            warm_s = timed([*grade, "--out", str(tmp / "warm"), "--cluster", cluster.address], ROOT)
        finally:
            cluster.stop()
    n = args.students
    print(f"{n} submissions of {args.topic} on {os.cpu_count()} cores; {args.workers} local workers, one grading each")
    print(f"kata grade --jobs {args.workers} (local pool): {local_s:6.1f} s  {60 * n / local_s:6.1f} submissions/min")
    print(f"kata grade --cluster, workers cold:  {cold_s:6.1f} s  {60 * n / cold_s:6.1f} submissions/min  (cluster start-up {startup_s:.1f} s not counted)")
    print(f"kata grade --cluster, workers warm:  {warm_s:6.1f} s  {60 * n / warm_s:6.1f} submissions/min")
    print(f"cluster / local throughput: {local_s / cold_s:.2f}x cold, {local_s / warm_s:.2f}x warm")


if __name__ == "__main__":
    main()
