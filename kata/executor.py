"""The executor: the only process that imports and runs learner code.

The judge (pytest with the graders, kata.judge) sends requests over a Unix socket; the
executor loads the learner's module by path, after the trusted harness (kata.harness),
runs every call into it under the kata's rules, and replies with tensors and plain data
(kata.wire). Objects that are not values (modules, caches, models, hooks) stay here; the
judge holds handles to them. Comparisons, verdicts and scores are made in the judge.

Started by the zygote (kata.zygote: a fork of a warm process that has imported torch) or,
where fork is unavailable, as `python -m kata.executor FD`.
"""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import sys
import traceback
import types
from pathlib import Path

import torch
from torch import Tensor

from kata import harness, wire
from kata.loader import LoadError, MissingTopicFile, load_module, short_traceback
from kata.verdicts import RuleBroken

MODES = ("plain", "call", "record_ops", "count_ops", "count_flops", "speed")


class Server:
    """Answers the judge's requests; one per executor process (or in-process for a notebook)."""

    def __init__(self):
        self.objects: dict[int, object] = {}  # handle id -> object, kept alive for the judge
        self.ids: dict[int, int] = {}  # id(object) -> handle id
        self.harness = harness.Harness(())
        self.learner_files: set[Path] = set()
        self.device = torch.device("cpu")
        self.type_ids: dict[type, int] = {}  # classes whose methods the judge may know (handle_of)
        self.sent_types: set[int] = set()

    # -------------------------------------------------------------- handles

    def handle_of(self, obj) -> dict:
        hid = self.ids.get(id(obj))
        if hid is None or self.objects.get(hid) is not obj:
            hid = len(self.objects) + 1
            self.objects[hid] = obj
            self.ids[id(obj)] = hid
        info = {"k": "handle", "id": hid, **describe(obj)}
        if isinstance(obj, types.ModuleType):
            # Its functions and classes, described: the judge refers to `module.f` without
            # asking for it (wire.Attribute), and it is looked up when a request uses it.
            info["members"] = {
                name: describe(value) for name, value in vars(obj).items()
                if not name.startswith("__") and isinstance(value, (types.FunctionType, type))
            }  # fmt: skip
        elif not isinstance(obj, (Tensor, type)):
            # Likewise the methods its class defines, sent once per class: `model.to(...)`
            # is then one request, not two.
            cls = type(obj)
            info["tid"] = tid = self.type_ids.setdefault(cls, len(self.type_ids) + 1)
            if tid not in self.sent_types:
                self.sent_types.add(tid)
                info["methods"] = methods_of(cls)
        return info

    def resolve(self, hid: int):
        if hid not in self.objects:
            raise LookupError(f"no object {hid} in this executor")
        return self.objects[hid]

    def resolve_attribute(self, hid: int, name: str):
        """`object.name` for a wire.Attribute, read under the kata's rules as op_getattr reads."""
        target = self.resolve(hid)
        with self.harness.enforced():
            return getattr(target, name)

    def encode(self, obj):
        return wire.encode(obj, self.handle_of)

    # -------------------------------------------------------------- requests

    def handle(self, data: bytes) -> bytes:
        rid = None
        try:
            request, tensors, generators = wire.loads_request(data, self.resolve, self.resolve_attribute)
            rid = request.get("rid")
            op = request["op"]
            if op == "seed":
                seed(request["seed"])
                reply = {"ok": None}
            else:
                if "seed" in request:
                    seed(request["seed"])
                reply = getattr(self, f"op_{op}")(request, tensors, generators)
            reply["rid"] = rid
            return wire.dumps_reply(reply)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the judge as data
            if isinstance(exc, KeyboardInterrupt):
                raise
            try:
                return wire.dumps_reply({"rid": rid, "error": self.describe_error(exc)})
            except BaseException:  # noqa: BLE001 - even an exception whose str() fails
                return wire.dumps_reply({"rid": rid, "error": {"type": "Exception", "mro": ["Exception"], "message": "an error", "learner": False, "traceback": ""}})

    def describe_error(self, exc: BaseException) -> dict:
        tb = exc.__traceback__
        last = None
        while tb is not None:
            last = tb
            tb = tb.tb_next
        from_learner = last is not None and Path(last.tb_frame.f_code.co_filename).resolve() in self.learner_files
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001
            message = f"<{type(exc).__name__} whose message cannot be printed>"
        return {
            "type": type(exc).__name__,
            "mro": [c.__name__ for c in type(exc).__mro__],
            "message": message[:20000],
            "learner": from_learner,
            "traceback": short_traceback(exc, self.learner_files)[:20000],
        }

    def op_start(self, request, tensors, generators) -> dict:
        self.harness = harness.Harness(tuple(request["forbidden"]))
        self.device = torch.device(request["device"])
        if self.device.type == "cpu":
            # Checks run many small ops; on a busy CPU torch's parallel regions stall on
            # descheduled threads (a 10 ms generate took 1.5 s with 2 threads under load).
            torch.set_num_threads(1)
        grader = request.get("grader")
        if grader:
            # The public grader, under the judge's name for it, so that the helpers and
            # classes a check sends here (by reference, pickled) resolve to its code.
            name, path = grader
            module = sys.modules.get(name)
            if module is None or Path(getattr(module, "__file__", "")).resolve() != Path(path).resolve():
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        return {"ok": None}

    def op_load(self, request, tensors, generators) -> dict:
        path = Path(request["path"])
        if not path.is_file():
            raise MissingTopicFile(request.get("missing") or f"no file {path}")
        if request.get("learner", True):
            self.learner_files.add(path.resolve())
        try:
            module = load_module(path)
        except SystemExit as exc:
            raise LoadError(f"{path} could not be loaded: it called sys.exit({exc.code!r}) while being imported") from None
        return {"ok": self.handle_of(module)}

    def op_getattr(self, request, tensors, generators) -> dict:
        with self.harness.enforced():
            value = getattr(request["target"], request["name"])
        return {"ok": self.encode(value)}

    def op_put(self, request, tensors, generators) -> dict:
        return {"ok": {"k": "list", "v": [self.handle_of(obj) for obj in request["objects"]]}}

    def op_call(self, request, tensors, generators) -> dict:
        mode = request.get("mode", "plain")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        h = harness.Harness(tuple(request["forbidden"])) if "forbidden" in request else self.harness
        fn, args, kwargs = request.get("fn"), tuple(request.get("args", ())), dict(request.get("kwargs", {}))
        may_modify = tuple(request.get("may_modify", ()))
        what = request.get("what")
        if mode == "plain":
            with h.enforced():
                result = fn(*args, **kwargs)
        elif mode == "call":
            result = h.call(fn, args, kwargs, what=what, may_modify=may_modify, backward=request.get("backward"))
        elif mode == "record_ops":
            ops = h.record_ops(fn, args, kwargs, may_modify=may_modify)
            given = [harness.TensorInfo.of(t).storage for _, t in harness.tensors_of(fn, args, kwargs)]
            result = ([harness.op_to_data(op) for op in ops], given)
        elif mode == "count_ops":
            result = dict(h.count_ops(fn, args, kwargs, may_modify=may_modify))
        elif mode == "count_flops":
            result = int(h.count_flops(fn, args, kwargs, may_modify=may_modify))
        else:  # speed
            learner, reference = args
            result = float(h.speed_ratio(learner, reference, device=self.device, may_modify=may_modify, **request.get("speed", {})))
        value = self.handle_of(result) if request.get("keep") else self.encode(result)
        return {"ok": value, "updates": self.updates(tensors, generators, may_modify, request.get("backward") is not None)}

    def updates(self, tensors: list[Tensor], generators: list[torch.Generator], may_modify, backward: bool) -> list:
        """What the call changed of the judge's arguments, for the judge to apply to its own:
        tensors it may modify, gradients a backward filled in, generators it advanced."""
        out = []
        modifiable = {id(t) for t in may_modify}
        for i, t in enumerate(tensors):
            if id(t) in modifiable:
                out.append(["tensor", i, t.detach()])
            if backward and t.is_leaf and t.grad is not None:
                out.append(["grad", i, t.grad.detach()])
        for j, g in enumerate(generators):
            out.append(["generator", j, g.get_state()])
        return out


_DESCRIBED: dict[type, tuple] = {}


def describe(obj) -> dict:
    """What the judge knows of an object it holds a handle to (kata.judge.Remote)."""
    cls = obj if isinstance(obj, type) else type(obj)
    mro = _DESCRIBED.get(cls)
    if mro is None:
        mro = _DESCRIBED[cls] = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__]
    return {
        "type": getattr(obj, "__qualname__", None) if isinstance(obj, type) else cls.__qualname__,
        "mro": mro,
        "is_class": isinstance(obj, type),
        "callable": callable(obj),
    }


def methods_of(cls: type) -> list[str]:
    """The names that are plain functions in cls or its bases (so reading one on an instance
    makes a bound method and runs no code of the class), unless the class customises
    attribute lookup."""
    if cls.__getattribute__ is not object.__getattribute__:
        return []
    seen, out = set(), []
    for c in cls.__mro__:
        for name, value in vars(c).items():
            if name in seen or name.startswith("__"):
                continue
            seen.add(name)
            if isinstance(value, types.FunctionType):
                out.append(name)
    return out


def seed(value: int) -> None:
    """The random state a check starts from: the same verdict on every run for code that draws."""
    random.seed(value)
    harness.seed_torch(value)


def serve(sock: socket.socket, server: Server | None = None) -> None:
    """Answer requests until the judge closes the connection or asks us to exit."""
    server = server or Server()
    while True:
        try:
            data = wire.recv(sock, limit=1 << 34)
        except EOFError:
            return
        if data == b"exit":
            return
        wire.send(sock, server.handle(data))


def quiet_output() -> None:
    """Learner prints go nowhere: the judge's terminal carries verdicts only."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def main(argv: list[str]) -> int:
    """`python -m kata.executor FD [OPTIONS]`: serve on socket FD, confined by OPTIONS (JSON)."""
    import json

    from kata import sandbox

    sock = socket.socket(fileno=int(argv[1]))
    sandbox.enter(json.loads(argv[2]) if len(argv) > 2 else {})
    quiet_output()
    try:
        serve(sock)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))


__all__ = ["LoadError", "MissingTopicFile", "RuleBroken", "Server", "serve"]
