"""The kernel's confinement of an executor (kata.sandbox), tried directly in a fresh
process: what a confined process can and cannot do, native code included."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from kata import sandbox
from tests.grading import ROOT

MISSING = sandbox.probe()
needs_sandbox = pytest.mark.skipif(MISSING is not None, reason=f"no kernel sandbox here: {MISSING}")

PROGRAM = """
import ctypes, json, os, socket, sys, threading
sys.path.insert(0, {root!r})
from kata import sandbox
sandbox.confine_kernel(read=[sys.prefix, sys.base_prefix, {root!r} + "/kata", "/usr", "/lib", "/lib64", "/etc",
                             "/proc/self", "/proc/cpuinfo", "/sys/devices/system/cpu"],
                       write=[{work!r}], processes={processes})
libc = ctypes.CDLL(None, use_errno=True)
out = {{}}
try:
    open({secret!r}).read(); out["read_outside"] = "read"
except OSError as e:
    out["read_outside"] = e.errno
out["native_write_outside"] = libc.open({outside!r}.encode(), os.O_WRONLY | os.O_CREAT, 0o644)
with open({work!r} + "/mine.txt", "w") as f:
    f.write("allowed")
out["write_inside"] = "ok"
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2); out["connect"] = "connected"
except OSError as e:
    out["connect"] = e.errno
pid = libc.fork()
if pid == 0:
    libc._exit(0)
out["native_fork"] = "forked" if pid > 0 else ctypes.get_errno()
t = threading.Thread(target=lambda: None); t.start(); t.join(); out["thread"] = "ok"
import torch
torch.set_num_threads(2)
out["torch"] = float((torch.ones(64, 64) @ torch.ones(64, 64)).sum())
print(json.dumps(out))
"""


def confined(tmp_path, processes=False) -> dict:
    work, outside = tmp_path / "work", tmp_path / "outside.txt"
    work.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("another student's file")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    code = PROGRAM.format(root=str(ROOT), work=str(work), secret=str(secret), outside=str(outside),
                          port=listener.getsockname()[1], processes=processes)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    listener.close()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["outside_exists"] = outside.exists()
    return result


@needs_sandbox
def test_a_confined_process_keeps_to_its_folder_and_starts_nothing(tmp_path):
    got = confined(tmp_path)
    assert got["read_outside"] != "read" and got["native_write_outside"] == -1 and not got["outside_exists"]
    assert got["write_inside"] == "ok"
    assert got["connect"] != "connected"
    assert got["native_fork"] != "forked"
    assert got["thread"] == "ok" and got["torch"] == 64 * 64 * 64  # threads, and torch's pool, still work


@needs_sandbox
def test_a_topic_may_allow_worker_processes(tmp_path):
    got = confined(tmp_path, processes=True)
    assert got["native_fork"] == "forked"
    assert got["read_outside"] != "read" and got["connect"] != "connected"  # still confined


def test_the_filter_refuses_process_calls_only_when_asked():
    for machine in sandbox.ARCHES:
        strict = sandbox.seccomp_program(machine)
        workers = sandbox.seccomp_program(machine, processes=True)
        assert len(workers) < len(strict)
        assert strict[-1] == (0x06, 0, 0, sandbox.RET_ALLOW)
