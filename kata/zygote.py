"""The zygote: a warm process that has imported torch, pytest, the harness and the graders,
computed nothing, and forks a fresh process for each grading (as PrairieLearn's zygote does).

Importing torch and pytest takes about 2 s; a fork of a process that has done it takes
milliseconds. Two kinds of child are forked:

- an executor (`fork`): the process that runs learner code, serving kata.executor's
  protocol on a socket the client passes along (SCM_RIGHTS), confined by kata.sandbox;
- a judge (`judge`): `kata <verb> ...` run as if from the command line (a `check` for
  `make watch`, a grading for `make grade`), its output on a file descriptor the client
  passes along. A judge asks this same zygote for its executor.

The zygote never runs a tensor op: torch's OpenMP pool and CUDA are not fork-safe, so they
are first touched in the children. It stays single-threaded for the same reason (a fork
copies only the forking thread), answers every request at once (waits are polled by the
client), kills the children of a client whose connection closes, and ends when the
process that started it does (its stdin closes).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ADDRESS_ENV = "KATA_ZYGOTE"

# ---------------------------------------------------------------- the zygote process


def _preload(full: bool, modules: list[str], topics: list[str] | None = None) -> None:
    """Import what every child needs, computing nothing: torch, pytest, the engine and the
    public graders (an executor imports its topic's grader for the helpers checks send it),
    of the topics served (`topics`, default all: each grader is 10 to 50 ms of start-up),
    and `modules`, those the topics served need that torch imports on first use (their
    course.toml `preload`: torch._dynamo where optimizers step). `full` (a zygote for many
    gradings: watch, grade, the self-tests) also imports what only some need: torch's
    meta-device kernels, with sympy (0.4 s at the first meta-device op), and the judge's own
    modules. A cold `make check` forks one executor only, as soon as it can: there an
    executor imports those if it needs them.

    torch._dynamo is not among them unless a topic asks: kata.lazy_dynamo keeps torch's
    own functions from importing it, and with it imported, each of the rule modes'
    dispatches goes through its disable wrapper (0.17 s of an attention grading)."""
    import importlib
    import importlib.util

    import pytest  # noqa: F401
    import torch  # noqa: F401  (the point: imported once, here)
    import torch.utils.flop_counter  # noqa: F401

    import kata.executor  # noqa: F401
    import kata.harness  # noqa: F401
    from kata import course

    for name in modules:
        importlib.import_module(name)
    if full:
        import torch._meta_registrations  # noqa: F401
        import torch.fx.experimental.symbolic_shapes  # noqa: F401
        from _pytest.config import default_plugins

        import pytest_timeout  # noqa: F401

        # pytest's own plugins that `import pytest` leaves for each session to import (30 ms of a judge's start).
        for plugin in default_plugins:
            importlib.import_module(f"_pytest.{plugin}")

        import kata.cli  # noqa: F401
        import kata.plugin  # noqa: F401
    for topic in course.topics():
        if topics is not None and topic.name not in topics:
            continue
        name = topic.grader.stem
        if name not in sys.modules and topic.grader.is_file():
            spec = importlib.util.spec_from_file_location(name, topic.grader)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:  # noqa: BLE001 - a broken grader is loaded (and reported) where it is used
                del sys.modules[name]


def _become_child(closing: list) -> None:
    for obj in closing:
        try:
            obj.close()
        except OSError:
            pass
    os.setsid()  # its own process group: ending it ends whatever it started
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _executor_child(conn_fd: int, options: dict) -> None:
    from kata import executor, sandbox

    code = 0
    try:
        sandbox.enter(options)
        executor.quiet_output()
        executor.serve(socket.socket(fileno=conn_fd))
    except BaseException:  # noqa: BLE001
        code = 1
    os._exit(code)


def _judge_child(out_fd: int | None, options: dict, address: str) -> None:
    code = 70
    try:
        if out_fd is None:
            out_fd = os.open(os.devnull, os.O_WRONLY)  # the zygote's own stdout is no one's to write to
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.environ.update(options.get("env") or {})
        os.environ[ADDRESS_ENV] = address  # its executor is forked here too
        if options.get("cwd"):
            os.chdir(options["cwd"])
        sys.argv = ["kata", *options["argv"]]
        from kata import cli

        code = cli.main(options["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)


def _reap(pid: int) -> int | None:
    """A child's exit status as subprocess reports it (negative: the signal), or None if running."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if not done:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _sockaddr(address: str) -> str:
    """'@name' is Linux's abstract namespace (a NUL first: no file, and out of reach of a
    process in another network namespace, as a confined executor is)."""
    return "\0" + address[1:] if address.startswith("@") else address


def serve(path: str, full: bool = True, modules: list[str] = (), topics: list[str] | None = None) -> None:
    _preload(full, list(modules), topics)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_sockaddr(path))
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listen")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    connections: list[socket.socket] = []
    owned: dict[socket.socket, set[int]] = {}  # a client's children, ended when it disconnects
    statuses: dict[int, int] = {}  # reaped children whose status no one has asked for yet
    doomed: set[int] = set()  # killed children still to reap
    try:
        print("ready", flush=True)
    except BrokenPipeError:
        return  # the process that started us has already ended
    while True:
        for pid in list(doomed):
            if _reap(pid) is not None:
                doomed.discard(pid)
        for key, _ in sel.select(timeout=1.0):
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    for pids in owned.values():
                        for pid in pids:
                            _kill(pid)
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
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
            except OSError:
                message, fds = b"", []
            if not message:
                # The client is gone (finished, killed at a time limit): whatever it left
                # running, a submission stuck in a loop included, goes with it.
                sel.unregister(conn)
                connections.remove(conn)
                conn.close()
                for pid in owned.pop(conn, ()):
                    _kill(pid)
                    doomed.add(pid)
                continue
            verb, _, rest = message.partition(b" ")
            if verb in (b"fork", b"judge"):
                options = json.loads(rest or b"{}")
                pid = os.fork()
                if pid == 0:
                    _become_child([listener, sys.stdin, *connections])
                    if verb == b"fork":
                        _executor_child(fds[0], options)
                    _judge_child(fds[0] if fds else None, options, path)
                for fd in fds:
                    os.close(fd)
                owned[conn].add(pid)
                conn.sendall(f"{pid}\n".encode())
            elif verb == b"wait":
                pid = int(rest)
                status = statuses.pop(pid, None)
                if status is None:
                    status = _reap(pid)
                if status is not None:
                    owned[conn].discard(pid)
                conn.sendall(f"{'none' if status is None else status}\n".encode())
            else:
                for fd in fds:
                    os.close(fd)
                conn.sendall(b"error\n")


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- the client


class Child:
    """A process the zygote forked for us: wait for it, end it."""

    def __init__(self, client: Client, pid: int):
        self.client, self.pid = client, pid
        self._status: int | None = None
        self._reaped = False

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status (negative: the signal), or None if it is still running after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while not self._reaped:
            answer = self.client.ask(f"wait {self.pid}".encode())
            if answer != "none":
                self._status, self._reaped = int(answer), True
                break
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self._status

    def kill(self) -> None:
        if not self._reaped:
            _kill(self.pid)
            self.wait(5.0)


class Client:
    """This process's connection to its zygote, started on first use (or inherited: a
    process the zygote forked, or one whose parent set KATA_ZYGOTE, uses that one)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._path: str | None = None
        self._owner: int | None = None  # the process that started the zygote
        self._conns: dict[tuple[int, int], socket.socket] = {}  # (pid, thread) -> connection

    def start(self, full: bool = True, topics=None) -> None:
        """Start the zygote now (it imports torch in parallel with whatever we do next);
        `full=False` for one grading only; `topics` it will grade (default: all), for their
        `preload` modules (kata.zygote._preload)."""
        with self._lock:
            if os.environ.get(ADDRESS_ENV):
                self._path = os.environ[ADDRESS_ENV]
                return
            if self._proc is not None and (os.getpid() != self._owner or self._proc.poll() is None):
                return  # running (a forked process cannot poll its parent's child: it trusts it)
            self._owner = os.getpid()
            if sys.platform.startswith("linux"):
                self._path = f"@kata-zygote-{os.getpid()}-{secrets.token_hex(8)}"
            else:
                self._path = str(Path(tempfile.mkdtemp(prefix="kata-zygote-")) / "zygote.sock")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kata.zygote", self._path, *([] if full else ["--lean"]),
                 *([] if topics is None else [f"--topics={','.join(t.name for t in topics)}"]), *preload_of(topics)],  # fmt: skip
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                # Its own session: the zygote must not take our terminal's Ctrl-C for itself.
                start_new_session=True,
            )
            self._conns.clear()

    def _conn(self) -> socket.socket:
        self.start()
        key = (os.getpid(), threading.get_ident())
        conn = self._conns.get(key)
        if conn is None:
            with self._lock:
                if self._proc is not None and self._proc.stdout is not None and os.getpid() == self._owner:
                    line = self._proc.stdout.readline()  # "ready" once everything is imported
                    self._proc.stdout.close()
                    self._proc.stdout = None
                    if line.strip() != b"ready":
                        raise RuntimeError("the zygote did not start")
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(_sockaddr(self._path))
            self._conns[key] = conn
        return conn

    def ask(self, message: bytes, fds: list[int] = ()) -> str:
        conn = self._conn()
        socket.send_fds(conn, [message], list(fds))
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                raise RuntimeError("the zygote ended")
            answer += chunk
        return answer.decode().strip()

    def fork_executor(self, options: dict | None = None):
        from kata.judge import Process

        judge_end, executor_end = socket.socketpair()
        try:
            child = Child(self, int(self.ask(b"fork " + json.dumps(options or {}).encode(), [executor_end.fileno()])))
        finally:
            executor_end.close()
        return Process(judge_end, child.pid, lambda: child.wait(2.0), child.kill)

    def fork_judge(self, argv: list[str], *, output_fd: int | None = None, env: dict | None = None, cwd: str | None = None) -> Child:
        """`kata ARGV...` in a fork of the zygote, writing to output_fd (the zygote's own
        output, a null device, if None)."""
        options = {"argv": list(argv), "env": env or {}, "cwd": cwd}
        return Child(self, int(self.ask(b"judge " + json.dumps(options).encode(), [] if output_fd is None else [output_fd])))


_client = Client()


def available() -> bool:
    """Whether processes here can be forked from a zygote (not on Windows; KATA_EXECUTOR=spawn
    forces the fallback, fresh processes, for its test)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and os.environ.get("KATA_EXECUTOR") != "spawn"


def preload_of(topics=None) -> list[str]:
    from kata import course

    return sorted({name for topic in (course.topics() if topics is None else topics) for name in topic.preload})


def start(full: bool = True, topics=None) -> None:
    if available():
        _client.start(full, topics)


def ready() -> None:
    """Wait until this process's zygote listens (before handing its address to another process)."""
    if available():
        _client._conn()


def address() -> str | None:
    """The socket of this process's zygote, for child processes to use (KATA_ZYGOTE)."""
    return _client._path


def launcher(options: dict | None = None):
    return lambda: _client.fork_executor(options)


def fork_judge(argv: list[str], **kwargs) -> Child:
    return _client.fork_judge(argv, **kwargs)


if __name__ == "__main__":
    options = sys.argv[2:]
    served = next((a.split("=", 1)[1] for a in options if a.startswith("--topics=")), None)
    serve(
        sys.argv[1],
        full="--lean" not in options,
        modules=[a for a in options if not a.startswith("--")],
        topics=None if served is None else [n for n in served.split(",") if n],
    )
