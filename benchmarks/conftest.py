"""Prints the figures `make bench` exists for, below pytest-benchmark's table."""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    medians = {b.name: b.stats.median for b in (session.benchmarks if session else []) if b.stats}
    tr = terminalreporter
    tr.section("kata figures")
    if {"test_import_torch", "test_make_check_attention_solutions"} <= medians.keys():
        check, torch_ = medians["test_make_check_attention_solutions"], medians["test_import_torch"]
        tr.write_line(f"make check topic=attention impl=solutions: {check:.2f} s median")
        tr.write_line(f"python -c 'import torch':                  {torch_:.2f} s median")
        tr.write_line(f"check / import torch:                      {check / torch_:.1f}x")
    for report in tr.stats.get("passed", []):
        for name, value in report.user_properties:
            tr.write_line(f"speed ratio {name}: {value}x the reference")
