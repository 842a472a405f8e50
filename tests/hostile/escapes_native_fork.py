"""Forks through libc (no audit event) a child that outlives the grading and writes later."""
import ctypes
import time

_libc = ctypes.CDLL(None, use_errno=True)
if _libc.fork() == 0:
    time.sleep(2)
    with open("__TRACE__/forked-child.txt", "w") as f:
        f.write("still running")
    _libc._exit(0)
