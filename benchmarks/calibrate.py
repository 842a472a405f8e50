"""Calibrate a topic's speed thresholds: grade the reference solution many times on a
deliberately loaded machine and print the spread of the measured speed ratios, next to
the ratios of the mutants that only a speed check should catch.

    .venv/bin/python benchmarks/calibrate.py attention --runs 20 --load 2 [--device cpu]

Choose the threshold in course.toml above the worst solution ratio with a wide margin
(the reference must never fail by chance) and well below the slow mutants' ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kata import course  # noqa: E402
from tests.grading import caught_by, examples, submission  # noqa: E402


def spin(_):
    while True:
        pass


def speed_checks(topic: course.Topic) -> str:
    return ",".join(re.findall(r"^def (test_\w*speed\w*)\(", topic.grader.read_text(), re.M))


def speed_ratios(topic: course.Topic, impl: Path | str, device: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "kata", "check", topic.name, "--impl", str(impl), "--device", device,
               "--json", str(out), "--only", speed_checks(topic)]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, capture_output=True)
        checks = json.loads(out.read_text())["checks"]
    # speed_ratio: learner / reference, a maximum; speedup: uncached / cached (kv_cache), a minimum.
    return {c["name"]: p[k] for c in checks for p in [c["properties"]] for k in ("speed_ratio", "speedup") if k in p}


def spread(ratios: list[float]) -> str:
    ratios = sorted(ratios)
    return f"median {statistics.median(ratios):.2f}  max {ratios[-1]:.2f}  min {ratios[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topic")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes competing for the CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variant-runs", type=int, default=5, help="gradings of each variant and slow mutant")
    args = parser.parse_args()
    topic = course.get(args.topic)

    pool = multiprocessing.Pool(args.load) if args.load else None
    if pool:
        pool.map_async(spin, range(args.load))
    try:
        seen: dict[str, list[float]] = {}
        for i in range(args.runs):
            for name, ratio in speed_ratios(topic, "solutions", args.device).items():
                seen.setdefault(name, []).append(ratio)
            print(f"run {i + 1}/{args.runs}", end="\r", flush=True)
        print(f"reference solution, {args.runs} runs, {args.load} busy processes, limits {topic.speed} {topic.speedup or ''}")
        for name, ratios in seen.items():
            print(f"  {name:<20} {spread(ratios)}")
        variants = [p for t, p in examples("variants") if t == topic.name]
        mutants = [p for t, p in examples("mutants") if t == topic.name]
        slow = [m for m in mutants if any(re.fullmatch(r"test_\w*speed", c) for c in caught_by(m))]
        for label, path in [("variant", v) for v in variants] + [("mutant", m) for m in slow]:
            runs: dict[str, list[float]] = {}
            with tempfile.TemporaryDirectory() as tmp:
                impl = submission(topic.name, path, Path(tmp))
                for _ in range(args.variant_runs):
                    for name, ratio in speed_ratios(topic, impl, args.device).items():
                        runs.setdefault(name, []).append(ratio)
            print(f"{label} {path.stem}, {args.variant_runs} runs:")
            for name, ratios in runs.items():
                print(f"  {name:<20} {spread(ratios)}")
    finally:
        if pool:
            pool.terminate()


if __name__ == "__main__":
    main()
