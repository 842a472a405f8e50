"""Writes a file outside its folder through libc, where Python's audit hook cannot see it."""
import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_fd = _libc.open(b"__TRACE__/native-write.txt", os.O_WRONLY | os.O_CREAT, 0o644)
if _fd >= 0:
    _libc.write(_fd, b"owned", 5)
    _libc.close(_fd)
