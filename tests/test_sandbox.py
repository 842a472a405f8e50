"""The kernel's confinement of an executor (kata.sandbox), tried directly in a fresh
process: what a confined process can and cannot do, native code included."""

from __future__ import annotations

import json
import os
import shutil
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

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
if {processes}:
    # What a DataLoader's workers need: a semaphore (in /dev/shm), in a /dev/shm of its own.
    import multiprocessing
    multiprocessing.Lock(); out["semaphore"] = "ok"
    with open("/dev/shm/" + {probe!r}, "w") as f:
        f.write("left for the next student")
    out["shm_write"] = "ok"
import torch
torch.set_num_threads(2)
out["torch"] = float((torch.ones(64, 64) @ torch.ones(64, 64)).sum())
print(json.dumps(out))
"""


# The confinement as a user who is not root, too (an instructor's account): there the
# network namespace needs a user namespace first (kata.sandbox.confine_kernel).
NOBODY = 65534
as_users = pytest.mark.parametrize("user", [None, pytest.param(NOBODY, marks=pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="trying another user needs root and setpriv"))], ids=["this_user", "not_root"])  # fmt: skip


def confined(tmp_path, processes=False, user=None) -> dict:
    if user is not None:
        # pytest's tmp_path is private to root: a folder the other user can reach, where
        # only the confinement (not file permissions) keeps it from the secret.
        tmp_path = Path(tempfile.mkdtemp(prefix="kata-sandbox-"))
        tmp_path.chmod(0o777)
    work, outside = tmp_path / "work", tmp_path / "outside.txt"
    work.mkdir()
    work.chmod(0o777)
    secret = tmp_path / "secret.txt"
    secret.write_text("another student's file")
    secret.chmod(0o644)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    probe = f"kata-sandbox-probe-{os.getpid()}-{secrets.token_hex(4)}"
    code = PROGRAM.format(root=str(ROOT), work=str(work), secret=str(secret), outside=str(outside),
                          port=listener.getsockname()[1], processes=processes, probe=probe)  # fmt: skip
    become = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    proc = subprocess.run([*become, sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    listener.close()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["outside_exists"] = outside.exists()
    result["shm_left"] = Path("/dev/shm", probe).exists()
    if user is not None:
        shutil.rmtree(tmp_path, ignore_errors=True)
    return result


@needs_sandbox
@as_users
def test_a_confined_process_keeps_to_its_folder_and_starts_nothing(tmp_path, user):
    got = confined(tmp_path, user=user)
    assert got["read_outside"] != "read" and got["native_write_outside"] == -1 and not got["outside_exists"]
    assert got["write_inside"] == "ok"
    assert got["connect"] != "connected"
    assert got["native_fork"] != "forked"
    assert got["thread"] == "ok" and got["torch"] == 64 * 64 * 64  # threads, and torch's pool, still work


@needs_sandbox
@as_users
def test_a_topic_may_allow_worker_processes(tmp_path, user):
    got = confined(tmp_path, processes=True, user=user)
    assert got["native_fork"] == "forked"
    # Worker queues' semaphores work, in a /dev/shm of the executor's own: nothing is left in the machine's.
    assert got["semaphore"] == "ok" and got["shm_write"] == "ok" and not got["shm_left"]
    assert got["read_outside"] != "read" and got["connect"] != "connected"  # still confined


def test_the_filter_refuses_process_calls_only_when_asked():
    for machine in sandbox.ARCHES:
        strict = sandbox.seccomp_program(machine)
        workers = sandbox.seccomp_program(machine, processes=True)
        assert len(workers) < len(strict)
        assert strict[-1] == (0x06, 0, 0, sandbox.RET_ALLOW)
