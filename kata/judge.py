"""The judge's side of the executor: a connection to the process that runs learner code,
and the proxies (Remote) through which graders use learner objects that live there.

The judge never imports learner code. It sends calls and receives values (kata.wire);
every comparison, verdict and score is computed here. A learner object that is not a value
(a module, a cache, a model) is a Remote: attribute reads and calls go to the executor,
and what comes back is again a value or a Remote. Graders use Remotes the way they used
the objects themselves, with a few mechanical differences (README, "Writing a grader"):
`checks.is_instance` instead of isinstance, `checks.place` for grader-built objects the
learner's code must work on, and `backward=` on rules.call for gradient checks.
"""

from __future__ import annotations

import builtins
import operator
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from kata import wire
from kata.loader import LoadError, MissingTopicFile
from kata.verdicts import RuleBroken


class ExecutorDied(Exception):
    """The process running the learner's code ended (or was ended) during a request;
    `status` says how, in words."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


class LoadTimeout(Exception):
    """A module did not finish loading within the time allowed (its str() is the limit)."""


class StaleObject(Exception):
    """A Remote made by an executor that has since ended (each check gets a working one)."""


class LearnerError(Exception):
    """An exception raised in the executor, rebuilt in the judge. Subclasses also derive
    from the builtin exception of the same name, so `except ValueError` still works."""

    def __init__(self, info: dict):
        super().__init__(info.get("message", ""))
        self.info = info
        self.from_learner = bool(info.get("learner"))
        self.learner_traceback = str(info.get("traceback", ""))
        self.remote_type = str(info.get("type", "Exception"))

    def __str__(self) -> str:
        return str(self.info.get("message", ""))


_EXCEPTION_CLASSES: dict[str, type] = {}
_NOT_REBUILT = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException", "Exception"}


def remote_exception(info: dict) -> BaseException:
    name = str(info.get("type", "Exception"))
    message = str(info.get("message", ""))
    if name == "RuleBroken":
        return RuleBroken(message)
    if name == "LoadError":
        return LoadError(message)
    if name == "MissingTopicFile":
        return MissingTopicFile(message)
    cls = _EXCEPTION_CLASSES.get(name)
    if cls is None:
        base = getattr(builtins, name, None)
        bases: tuple[type, ...] = (LearnerError,)
        if isinstance(base, type) and issubclass(base, Exception) and name not in _NOT_REBUILT:
            bases = (LearnerError, base)
        try:
            cls = type(name, bases, {"__init__": LearnerError.__init__, "__str__": LearnerError.__str__})
        except TypeError:  # builtins whose memory layout cannot be mixed in (OSError's family)
            cls = type(name, (LearnerError,), {})
        _EXCEPTION_CLASSES[name] = cls
    return cls(info)


# ---------------------------------------------------------------- proxies


class Remote:
    """An object living in the executor. Attribute reads and calls are requests to it."""

    __slots__ = ("_kata_ex", "_kata_handle", "_kata_info", "__weakref__")

    def __init__(self, ex: Executor, handle: wire.Handle, info: dict):
        object.__setattr__(self, "_kata_ex", ex)
        object.__setattr__(self, "_kata_handle", handle)
        object.__setattr__(self, "_kata_info", info)

    @property
    def kata_type(self) -> str:
        return str(self._kata_info.get("type"))

    @property
    def kata_mro(self) -> list[str]:
        return list(self._kata_info.get("mro", []))

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        known = self._kata_ex.known_attribute(self, name)
        if known is not None:
            return Remote(self._kata_ex, wire.Attribute(self, name), known)
        return self._kata_ex.getattr(self, name)

    def __setattr__(self, name: str, value) -> None:
        self._kata_ex.call(builtins.setattr, (self, name, value), {})

    def __call__(self, *args, **kwargs):
        return self._kata_ex.call(self, args, kwargs)

    def __len__(self) -> int:
        return self._kata_ex.call(builtins.len, (self,), {})

    def __iter__(self):
        return iter(self._kata_ex.call(builtins.list, (self,), {}))

    def __getitem__(self, key):
        return self._kata_ex.call(operator.getitem, (self, key), {})

    def __repr__(self) -> str:
        return f"<{self.kata_type} in the executor>"


def is_remote(obj) -> bool:
    return isinstance(obj, Remote)


def find_executor(*objs) -> Executor | None:
    """The executor of the first Remote found in objs (partials, containers included)."""
    import functools

    stack = list(objs)
    seen = 0
    while stack and seen < 10000:
        seen += 1
        obj = stack.pop()
        if isinstance(obj, Remote):
            return obj._kata_ex
        if isinstance(obj, functools.partial):
            stack += [obj.func, *obj.args, *obj.keywords.values()]
        elif isinstance(obj, (list, tuple)):
            stack += list(obj)
        elif isinstance(obj, dict):
            stack += list(obj.values())
    return None


# ---------------------------------------------------------------- launching executors


class Process:
    """A started executor: its end of the socket, and how to end and examine it."""

    def __init__(self, sock: socket.socket, pid: int | None, wait_status, kill):
        self.sock, self.pid, self._wait_status, self._kill = sock, pid, wait_status, kill

    def status(self) -> str:
        """Why the process ended, in words."""
        code = self._wait_status()
        if code is None:
            return "it stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = {"SIGSEGV": ": a crash in native code?", "SIGKILL": ": out of memory, or killed", "SIGABRT": ": an abort in native code?"}
            return f"killed by {name}{hint.get(name, '')}"
        return f"it exited with status {code} (sys.exit or os._exit in your code?)"

    def kill(self) -> None:
        self._kill()


def spawn_executor(options: dict | None = None) -> Process:
    """A fresh `python -m kata.executor`: the cold path, where fork is unavailable."""
    import json

    judge_end, executor_end = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata.executor", str(executor_end.fileno()), json.dumps(options or {})],
        pass_fds=[executor_end.fileno()],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    executor_end.close()

    def wait_status():
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def kill():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()

    return Process(judge_end, proc.pid, wait_status, kill)


# ---------------------------------------------------------------- the connection


class Executor:
    """One executor process for one grading (a topic, an implementation, a device). If it
    dies, the next request starts a new one and loads the same modules again; objects made
    by the old one are stale."""

    def __init__(self, *, forbidden, device: str, grader: tuple[str, str] | None = None, launcher=None, local=None):
        self.forbidden = tuple(forbidden)
        self.device = str(device)
        self.grader = grader
        self.launcher = launcher
        self.local = local  # an in-process kata.executor.Server (a notebook's own functions)
        self.process: Process | None = None
        self.rid = 0
        self.modules: list[tuple[Remote, dict]] = []  # module proxies and how to load them again
        self.handles: list[wire.Handle] = []
        self.remotes: dict[int, Remote] = {}
        self.methods: dict[int, frozenset[str]] = {}  # class id (Server.handle_of's tid) -> its methods
        self.pending_seed: int | None = None
        self.died: str | None = None

    # -------------------------------------------------------------- process

    def _ensure(self) -> None:
        if self.local is not None or self.process is not None:
            return
        try:
            self.process = self.launcher()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ExecutorDied(f"the process to run your code could not be started ({type(exc).__name__}: {exc})") from None
        for handle in self.handles:
            handle.hid = None  # made by an executor that has ended
        self.handles, self.remotes, self.methods = [], {}, {}
        self._request({"op": "start", "forbidden": self.forbidden, "device": self.device, "grader": self.grader})
        for remote, load in self.modules:
            fresh = self._request({"op": "load", **load})
            object.__setattr__(remote, "_kata_handle", fresh._kata_handle)
            object.__setattr__(remote, "_kata_info", fresh._kata_info)

    def _end(self) -> str:
        """End the current process (if any) and say how it ended."""
        process, self.process = self.process, None
        if process is None:
            return "it had ended"
        try:
            process.sock.close()
        except OSError:
            pass
        status = process.status()
        process.kill()
        return status

    def close(self) -> None:
        if self.process is not None:
            try:
                wire.send(self.process.sock, b"exit")
            except OSError:
                pass
            self._end()

    # -------------------------------------------------------------- requests

    def _request(self, request: dict, timeout: float | None = None):
        self.rid += 1
        request["rid"] = self.rid
        if self.pending_seed is not None and request["op"] != "start":
            request["seed"], self.pending_seed = self.pending_seed, None
        payload, tensors, generators = wire.dumps_request(request)
        if self.local is not None:
            reply = self.local.handle(payload)
        else:
            try:
                self.process.sock.settimeout(timeout)
                wire.send(self.process.sock, payload)
                reply = wire.recv(self.process.sock)
                self.process.sock.settimeout(None)
            except TimeoutError:
                self._end()
                raise LoadTimeout(f"{timeout:g}") from None
            except (EOFError, OSError, wire.ProtocolError) as exc:
                status = self._end()
                if isinstance(exc, wire.ProtocolError):
                    raise ExecutorDied(f"the process running your code sent {exc}") from None
                raise ExecutorDied(f"the process running your code ended during the call ({status})", status) from None
            except BaseException:
                # A timeout (pytest-timeout interrupts us here) or an interrupt: the
                # executor may still be busy with the call, so it cannot serve another.
                self._end()
                raise
        try:
            tree = wire.loads_reply(reply)
            if not isinstance(tree, dict) or tree.get("rid") != self.rid:
                raise wire.ProtocolError("a reply that does not answer the request")
            if "error" in tree:
                info = tree["error"]
                if not isinstance(info, dict):
                    raise wire.ProtocolError("a malformed error")
                raise remote_exception(info)
            value = wire.decode(tree.get("ok"), self._make_remote, on_tensor=self._tag_tensor)
            self._apply(tree.get("updates") or [], tensors, generators)
            return value
        except wire.ProtocolError as exc:
            if self.local is None:
                self._end()
            raise ExecutorDied(f"the process running your code sent {exc}") from None

    def request(self, request: dict, timeout: float | None = None):
        self._ensure()
        return self._request(request, timeout)

    def _make_remote(self, info: dict) -> Remote:
        hid = info["id"]
        methods = info.get("methods")
        if isinstance(methods, list) and isinstance(info.get("tid"), int):
            self.methods[info["tid"]] = frozenset(m for m in methods if isinstance(m, str))
        remote = self.remotes.get(hid)
        if remote is None:
            handle = wire.Handle(hid)
            self.handles.append(handle)
            remote = self.remotes[hid] = Remote(self, handle, info)
        return remote

    # What a Remote for a method looks like (Remote.kata_type, checks.is_instance).
    METHOD = {"type": "method", "mro": ["builtins.method", "builtins.object"], "is_class": False, "callable": True}

    def known_attribute(self, remote: Remote, name: str) -> dict | None:
        """The description of remote.name if it is a method of its class or a function or
        class of its module, which a wire.Attribute can then refer to without a request;
        None for anything else (read with a request)."""
        info = remote._kata_info
        if isinstance(remote._kata_handle, wire.Attribute):
            return None
        members = info.get("members")
        if isinstance(members, dict):
            member = members.get(name)
            return member if isinstance(member, dict) and isinstance(member.get("mro"), list) else None
        methods = self.methods.get(info.get("tid"))
        return self.METHOD if methods is not None and name in methods else None

    def _tag_tensor(self, t: torch.Tensor, ref: int) -> None:
        # checks.in_executor(t): the executor's own tensor, for trusted helpers there.
        t.kata_remote = self._make_remote({"id": ref, "type": "Tensor", "mro": ["torch.Tensor"], "callable": False})

    @staticmethod
    def _apply(updates: list, tensors: list, generators: list) -> None:
        """Bring the judge's own arguments up to date with what the call did to them."""
        for update in updates:
            if not (isinstance(update, list) and len(update) == 3 and isinstance(update[1], int)):
                raise wire.ProtocolError("a malformed update")
            kind, index, value = update
            if kind == "generator" and 0 <= index < len(generators) and isinstance(value, torch.Tensor):
                generators[index].set_state(value)
                continue
            if not (0 <= index < len(tensors) and isinstance(value, torch.Tensor)):
                raise wire.ProtocolError("an update of an unknown tensor")
            local = tensors[index]
            if value.shape != local.shape:
                raise wire.ProtocolError("an update of the wrong shape")
            if kind == "tensor":
                with torch.no_grad():
                    local.copy_(value)
            elif kind == "grad":
                local.grad = value.to(local.dtype)
            else:
                raise wire.ProtocolError(f"an unknown update {kind!r}")

    # -------------------------------------------------------------- what graders use

    def load(self, path: Path, *, learner: bool = True, missing: str | None = None, timeout: float | None = 60.0) -> Remote:
        """A module loaded by path in the executor, loaded again in a new executor if this one
        dies. A load that takes longer than `timeout` s ends the executor (LoadTimeout)."""
        load = {"path": str(path), "learner": learner, "missing": missing}
        remote = self.request({"op": "load", **load}, timeout)
        self.modules.append((remote, load))
        return remote

    def adopt(self, module) -> Remote:
        """A module object already in this process (in-process executors only)."""
        return self.local_remote(module)

    def local_remote(self, obj) -> Remote:
        return self._make_remote(self.local.handle_of(obj))

    def getattr(self, remote: Remote, name: str):
        return self.request({"op": "getattr", "target": remote, "name": name})

    def call(self, fn, args=(), kwargs=None, **options):
        return self.request({"op": "call", "fn": fn, "args": tuple(args), "kwargs": dict(kwargs or {}), **options})

    def put(self, *objects) -> list[Remote]:
        return self.request({"op": "put", "objects": list(objects)})

    def seed(self, value: int) -> None:
        """Every check's random state starts from `value`, set with the check's first request."""
        self.pending_seed = value
