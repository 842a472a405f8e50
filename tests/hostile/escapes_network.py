"""Connects to a listener on the grading machine (it would send the instructor's files out)."""
import socket

try:
    socket.create_connection(("127.0.0.1", __PORT__), timeout=2).sendall(b"hello from a submission")
except OSError:
    pass
