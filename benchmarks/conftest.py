"""Prints the figures `make bench` exists for, below pytest-benchmark's table."""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in (session.benchmarks if session else []) if b.stats]
    torch_ = next((b.stats.median for b in benchmarks if b.name == "test_import_torch"), None)
    tr = terminalreporter
    tr.section("kata figures")
    if torch_:
        tr.write_line(f"python -c 'import torch': {torch_:.2f} s median")
    for b in benchmarks:
        command = b.extra_info.get("command")
        if command and torch_:
            tr.write_line(f"{command}: {b.stats.median:.2f} s median ({b.stats.median / torch_:.1f}x import torch)")
    for report in tr.stats.get("passed", []):
        for name, value in report.user_properties:
            tr.write_line(f"{name}: {value}x")
