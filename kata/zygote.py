"""The zygote: a warm process that has imported torch and the harness, computed nothing,
and forks a fresh executor for each grading (as PrairieLearn's zygote does).

Importing torch takes about 1.5 s; a fork of a process that has done it takes
milliseconds. The zygote never runs a tensor op: torch's OpenMP pool and CUDA are not
fork-safe, so they are first touched in the forked children.

A client (any judge process, kata.judge) connects to the zygote's Unix socket and sends
`fork` with its end of a fresh socket pair attached (SCM_RIGHTS); the zygote forks, the
child serves the executor protocol on that socket (kata.executor.serve), and the parent
answers with the child's pid. `wait PID SECONDS` reaps a child and answers its status.
The zygote ends when the process that started it does (its stdin closes).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# ---------------------------------------------------------------- the zygote process


def _preload() -> None:
    """Import what every executor needs, computing nothing: torch, the harness, and the
    public graders (an executor imports its topic's grader for the helpers checks send it)."""
    import importlib.util

    import pytest  # noqa: F401
    import torch  # noqa: F401  (the point: imported once, here)
    import torch.utils.flop_counter  # noqa: F401

    import kata.executor  # noqa: F401
    import kata.harness  # noqa: F401
    from kata import course

    for topic in course.topics():
        name = topic.grader.stem
        if name not in sys.modules and topic.grader.is_file():
            spec = importlib.util.spec_from_file_location(name, topic.grader)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:  # noqa: BLE001 - a broken grader is loaded (and reported) by its executor
                del sys.modules[name]


def _child(conn_fd: int, closing: list, options: dict) -> None:
    """In the forked child: become the executor."""
    for obj in closing:
        try:
            obj.close()
        except OSError:
            pass
    os.setsid()  # its own process group: ending it ends whatever it started
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from kata import executor, sandbox

    code = 0
    try:
        sandbox.enter(options)
        executor.quiet_output()
        executor.serve(socket.socket(fileno=conn_fd))
    except BaseException:  # noqa: BLE001
        code = 1
    os._exit(code)


def _status(pid: int, wait_s: float) -> int | None:
    """A child's exit status as subprocess reports it (negative: the signal), or None."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def serve(path: str) -> None:
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listen")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    connections: list[socket.socket] = []
    owned: dict[socket.socket, set[int]] = {}  # a client's executors, ended when it disconnects
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # the process that started us has ended
                continue
            if key.data == "listen":
                conn, _ = listener.accept()
                connections.append(conn)
                owned[conn] = set()
                sel.register(conn, selectors.EVENT_READ, "conn")
                continue
            conn = key.fileobj
            try:
                message, fds, _, _ = socket.recv_fds(conn, 65536, 1)
            except OSError:
                message, fds = b"", []
            if not message:
                # The judge is gone (finished, killed at a time limit): whatever it left
                # running, a submission stuck in a loop included, goes with it.
                sel.unregister(conn)
                connections.remove(conn)
                conn.close()
                for pid in owned.pop(conn, ()):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    _status(pid, 5.0)
                continue
            words = message.split(b" ", 1)
            if words[0] == b"fork" and fds:
                options = json.loads(words[1]) if len(words) > 1 else {}
                pid = os.fork()
                if pid == 0:
                    _child(fds[0], [listener, sys.stdin, *connections], options)
                os.close(fds[0])
                owned[conn].add(pid)
                conn.sendall(f"{pid}\n".encode())
            elif words[0] == b"wait":
                pid_s, wait_s = words[1].split()
                status = _status(int(pid_s), float(wait_s))
                if status is not None:
                    owned[conn].discard(int(pid_s))
                conn.sendall(f"{'none' if status is None else status}\n".encode())
            else:
                for fd in fds:
                    os.close(fd)
                conn.sendall(b"error\n")


# ---------------------------------------------------------------- the client


class Client:
    """One process's connection to its zygote, started on first use."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._path: str | None = None
        self._conns: dict[int, socket.socket] = {}  # pid of the judge process -> connection
        self._owner: int | None = None  # the process that started the zygote

    def start(self) -> None:
        """Start the zygote now (it imports torch in parallel with whatever we do next), or
        use the one whose address a parent process handed down (a class grading's)."""
        with self._lock:
            if self._proc is None and os.environ.get(ADDRESS_ENV):
                self._path = os.environ[ADDRESS_ENV]
                return
            if self._proc is None and self._path is not None:
                return
            if self._proc is not None and (os.getpid() != self._owner or self._proc.poll() is None):
                return  # running (a forked judge cannot poll its parent's child: it trusts it)
            self._owner = os.getpid()
            folder = tempfile.mkdtemp(prefix="kata-zygote-")
            self._path = str(Path(folder) / "zygote.sock")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kata.zygote", self._path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # The zygote must not take our terminal's Ctrl-C for itself.
                start_new_session=True,
            )
            self._conns.clear()

    def _conn(self) -> socket.socket:
        self.start()
        conn = self._conns.get(os.getpid())
        if conn is None:
            if self._proc is not None and self._proc.stdout is not None and os.getpid() == self._owner:
                line = self._proc.stdout.readline()  # "ready" once torch is imported
                self._proc.stdout.close()
                self._proc.stdout = None
                if line.strip() != b"ready":
                    raise RuntimeError("the zygote did not start")
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(self._path)
            self._conns[os.getpid()] = conn
        return conn

    def _ask(self, message: bytes, fds: list[int] = ()) -> str:
        conn = self._conn()
        socket.send_fds(conn, [message], list(fds))
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                raise RuntimeError("the zygote ended")
            answer += chunk
        return answer.decode().strip()

    def fork(self, options: dict | None = None):
        from kata.judge import Process

        judge_end, executor_end = socket.socketpair()
        try:
            pid = int(self._ask(b"fork " + json.dumps(options or {}).encode(), [executor_end.fileno()]))
        finally:
            executor_end.close()
        reaped: list[int | None] = []

        def wait_status(wait_s: float = 2.0):
            if not reaped:
                answer = self._ask(f"wait {pid} {wait_s}".encode())
                if answer == "none":
                    return None
                reaped.append(int(answer))
            return reaped[0]

        def kill():
            if reaped:
                return
            try:
                os.killpg(pid, signal.SIGKILL)  # the executor and anything it started
            except (ProcessLookupError, PermissionError):
                pass
            wait_status(5.0)

        return Process(judge_end, pid, wait_status, kill)


ADDRESS_ENV = "KATA_ZYGOTE"
_client = Client()


def start() -> None:
    if hasattr(os, "fork"):
        _client.start()


def address() -> str | None:
    """The socket of this process's zygote, for child processes to use (KATA_ZYGOTE)."""
    return _client._path


def launcher(options: dict | None = None):
    return lambda: _client.fork(options)


if __name__ == "__main__":
    serve(sys.argv[1])
