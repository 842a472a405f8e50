"""What crosses between the judge and an executor, and how.

Frames are a length (8 bytes, big-endian) and a payload, over a Unix socket.

- Judge -> executor: requests, pickled. The executor is the untrusted side, and the judge
  is trusted, so unpickling there is safe. Tensors and torch generators are pickled out of
  band, by index, so the reply can say which of them the call changed (a running
  statistic updated in place, a generator advanced, a gradient filled in); handles to
  executor objects travel as their ids.
- Executor -> judge: replies as JSON for the structure and raw bytes for tensors (dtype,
  shape and strides in the JSON, checked against the bytes), then decoded by `decode`
  below, which accepts only the tagged shapes `encode` makes. Nothing a submission returns
  is ever unpickled, not even by torch's weights-only loader (also 10x slower here), and a
  reply over MAX_REPLY bytes is refused before it is read.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import socket
import struct
import types
from collections.abc import Callable

import torch
from torch import Tensor

HEADER = struct.Struct(">Q")
MAX_REPLY = 1 << 30  # 1 GiB: a reply larger than this is the submission's error
MAX_DEPTH = 64  # nesting of containers in a reply
PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


class ProtocolError(Exception):
    """A frame or reply that does not follow the protocol (malformed, oversized, cut off)."""


class StaleHandle(Exception):
    """A handle to an object of an executor that has since ended."""


# ---------------------------------------------------------------- frames


def send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(HEADER.pack(len(payload)) + payload)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other process closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket, limit: int = MAX_REPLY) -> bytes:
    (size,) = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if size > limit:
        raise ProtocolError(f"a reply of {size:,} bytes, over the limit of {limit:,}")
    return _read_exactly(sock, size)


# ---------------------------------------------------------------- judge -> executor


class Handle:
    """The judge's reference to an object that lives in the executor (kata.judge.Remote
    holds one); pickled as its id."""

    def __init__(self, hid: int):
        self.hid = hid


class Attribute(Handle):
    """The judge's reference to `owner.name` (owner a kata.judge.Remote), for a method or a
    module's function or class: looked up in the executor when a request uses it, which
    saves the request that reading the attribute would be. Pickled as (owner's id, name)."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name

    @property
    def hid(self) -> int | None:
        return self.owner._kata_handle.hid


class _RequestPickler(pickle.Pickler):
    def __init__(self, file, tensors: list, generators: list):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors, self.generators = tensors, generators
        self._seen: dict[int, int] = {}

    def persistent_id(self, obj):
        handle = getattr(obj, "_kata_handle", None)
        if isinstance(handle, Handle):
            if handle.hid is None:
                raise StaleHandle("this object was made by an executor that has since ended; make it again")
            if isinstance(handle, Attribute):
                return ("a", handle.hid, handle.name)
            return ("h", handle.hid)
        if isinstance(obj, Tensor):
            if id(obj) not in self._seen:
                self._seen[id(obj)] = len(self.tensors)
                self.tensors.append(obj)
            return ("t", self._seen[id(obj)])
        if isinstance(obj, torch.Generator):
            self.generators.append(obj)
            return ("g", len(self.generators) - 1)
        return None


def dumps_request(request: dict) -> tuple[bytes, list[Tensor], list[torch.Generator]]:
    """The request's bytes, and the tensors and generators it carries, in index order."""
    tensors: list[Tensor] = []
    generators: list[torch.Generator] = []
    body = io.BytesIO()
    _RequestPickler(body, tensors, generators).dump(request)
    side = io.BytesIO()
    pickle.dump(([_request_tensor(t) for t in tensors], [(str(g.device), g.get_state()) for g in generators]), side, protocol=pickle.HIGHEST_PROTOCOL)
    side_bytes = side.getvalue()
    return HEADER.pack(len(side_bytes)) + side_bytes + body.getvalue(), tensors, generators


def _request_tensor(t: Tensor) -> tuple:
    """A request's tensor: most as their raw bytes (a fifth of the time of torch's own
    pickling); by torch's reduction, which keeps a view's whole storage, its offset and its
    strides, any that views part of its storage or is not a plain CPU tensor. (Neither
    keeps two tensors of a request on one storage.) .grad is not pickled with a tensor,
    so it travels beside."""
    grad = t.grad if t.is_leaf else None
    plain = type(t) is Tensor or (type(t) is torch.nn.Parameter and t.is_contiguous())
    if plain and t.device.type == "cpu" and t.layout == torch.strided and not t.is_quantized and _dense(t) and t.numel() > 0:
        storage = t.untyped_storage()
        whole = t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
        if whole and t.dtype in _DTYPE_NAMES and not (t.is_conj() or t.is_neg()):
            order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
            flat = t.detach().permute(order).reshape(-1)  # memory order: a view, no copy
            raw = flat.view(torch.uint8).numpy().tobytes()
            return ("raw", _DTYPE_NAMES[t.dtype], list(t.shape), order, raw, isinstance(t, torch.nn.Parameter), t.requires_grad, grad)
    return ("torch", t if isinstance(t, torch.nn.Parameter) else t.detach(), t.requires_grad, grad)


def _tensor_of_request(record: tuple) -> Tensor:
    if record[0] == "torch":
        _, t, requires_grad, grad = record
        if not isinstance(t, torch.nn.Parameter) and requires_grad:
            t = t.requires_grad_()
    else:
        _, dtype, shape, order, raw, parameter, requires_grad, grad = record
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(DTYPES[dtype])
        t = flat.reshape([shape[d] for d in order]).permute([order.index(d) for d in range(len(shape))])
        if parameter:
            t = torch.nn.Parameter(t, requires_grad=requires_grad)
        elif requires_grad:
            t = t.requires_grad_()
    if grad is not None:
        t.grad = grad
    return t


class _RequestUnpickler(pickle.Unpickler):
    def __init__(self, file, tensors, generators, resolve: Callable[[int], object], resolve_attribute: Callable[[int, str], object]):
        super().__init__(file)
        self.tensors, self.generators, self.resolve, self.resolve_attribute = tensors, generators, resolve, resolve_attribute

    def persistent_load(self, pid):
        if pid[0] == "a":
            return self.resolve_attribute(pid[1], pid[2])
        kind, index = pid
        if kind == "h":
            return self.resolve(index)
        if kind == "t":
            return self.tensors[index]
        if kind == "g":
            return self.generators[index]
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def loads_request(
    data: bytes, resolve: Callable[[int], object], resolve_attribute: Callable[[int, str], object]
) -> tuple[dict, list[Tensor], list[torch.Generator]]:
    (size,) = HEADER.unpack(data[: HEADER.size])
    side = data[HEADER.size : HEADER.size + size]
    raw_tensors, raw_generators = pickle.loads(side)
    tensors = [_tensor_of_request(record) for record in raw_tensors]
    generators = []
    for device, state in raw_generators:
        g = torch.Generator(device=device)
        g.set_state(state)
        generators.append(g)
    request = _RequestUnpickler(io.BytesIO(data[HEADER.size + size :]), tensors, generators, resolve, resolve_attribute).load()
    return request, tensors, generators


# ---------------------------------------------------------------- executor -> judge


def encode(obj, handle_of: Callable[[object], dict], depth: int = 0):
    """obj as a tree of tagged plain data and tensors. Objects that are not values (modules,
    caches, functions) become handles made by `handle_of`."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"a value nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, Tensor):
        return encode_tensor(obj, handle_of(obj)["id"])
    if isinstance(obj, PLAIN):
        return obj
    if isinstance(obj, (tuple, list, types.GeneratorType, type({}.keys()), type({}.values()), type({}.items()))):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return {"k": kind, "v": [encode(x, handle_of, depth + 1) for x in obj]}
    if isinstance(obj, dict):
        return {"k": "dict", "v": [[encode(k, handle_of, depth + 1), encode(v, handle_of, depth + 1)] for k, v in obj.items()]}
    return handle_of(obj)


def encode_tensor(t: Tensor, ref: int | None = None) -> dict:
    data = t.detach()
    try:
        storage = t.untyped_storage()
        storage_ptr, nbytes = storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):
        storage_ptr, nbytes = -1, 0
    # torch.save writes a view's whole storage: copy out a small view of a large one.
    if not t.is_meta and nbytes > 2 * t.numel() * t.element_size() + 64:
        data = data.clone()
    return {
        "k": "tensor",
        "data": data,
        "grad": t.grad.detach() if t.grad is not None else None,
        "requires_grad": t.requires_grad,
        "parameter": isinstance(t, torch.nn.Parameter),
        # Where it lived in the executor: storage identity is a work check's evidence.
        "storage": storage_ptr,
        "nbytes": nbytes,
        "base": id(t._base) if t._base is not None else None,
        "ref": ref,  # the executor keeps it: the judge may hand it back to a trusted helper
    }


# A reply is JSON (its structure, parsed by the C parser) followed by the raw bytes of its
# tensors: no unpickling at all, so nothing in it can name a class or a function.
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2,
)}  # fmt: skip
DEVICES = ("cpu", "cuda", "mps", "meta")
_DTYPE_NAMES = {d: name for name, d in DTYPES.items()}
JSON_HEADER = struct.Struct(">I")


def dumps_reply(tree) -> bytes:
    buffers: list[bytes] = []

    def plain(x, depth=0):
        if depth > MAX_DEPTH + 8:
            raise ProtocolError(f"a value nested more than {MAX_DEPTH} levels deep")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"$float": repr(x)}
        if isinstance(x, complex):
            return {"$complex": [plain(x.real), plain(x.imag)]}
        if isinstance(x, torch.dtype):
            return {"$dtype": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"$device": str(x)}
        if isinstance(x, torch.Size):
            return {"$size": list(x)}
        if isinstance(x, bytes):
            buffers.append(x)
            return {"$bytes": len(buffers) - 1}
        if isinstance(x, Tensor):
            return _tensor_plain(x, buffers)
        if isinstance(x, (list, tuple)):
            return [plain(v, depth + 1) for v in x]
        if isinstance(x, dict) and all(isinstance(k, str) for k in x):
            return {k: plain(v, depth + 1) for k, v in x.items()}
        raise ProtocolError(f"a {type(x).__name__} cannot be sent")

    body = json.dumps({"tree": plain(tree), "sizes": [len(b) for b in buffers]}, separators=(",", ":")).encode()
    return JSON_HEADER.pack(len(body)) + body + b"".join(buffers)


def _dense(t: Tensor) -> bool:
    """Whether t's elements fill its memory exactly once, in some order of its dims (so a
    copy can keep its strides)."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _tensor_plain(t: Tensor, buffers: list[bytes]) -> dict:
    t = t.detach()
    keep = not t.is_meta and _dense(t) and t.numel() > 0
    out = {"$t": None, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "device": str(t.device),
           "stride": list(t.stride()) if keep or t.is_meta else None}  # fmt: skip
    if t.is_meta:
        return out
    if keep and not t.is_contiguous():
        # The elements in memory order: permute to the order of the strides, then flatten.
        order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
        flat = t.permute(order).contiguous()
        out["order"] = order
    else:
        flat = t.contiguous()
    buffers.append(flat.cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    out["$t"] = len(buffers) - 1
    return out


def loads_reply(data: bytes):
    try:
        (size,) = JSON_HEADER.unpack_from(data)
        meta = json.loads(data[JSON_HEADER.size : JSON_HEADER.size + size])
        sizes = meta["sizes"]
        if not (isinstance(sizes, list) and all(isinstance(n, int) and n >= 0 for n in sizes)):
            raise ProtocolError("malformed buffer sizes")
        offsets, at = [], JSON_HEADER.size + size
        for n in sizes:
            offsets.append((at, at + n))
            at += n
        if at != len(data):
            raise ProtocolError("a reply whose length does not add up")
        return _from_plain(meta["tree"], data, offsets, 0)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is the submission's malformed reply
        raise ProtocolError(f"an unreadable reply ({type(exc).__name__}: {str(exc)[:200]})") from None


def _from_plain(x, data: bytes, offsets: list, depth: int):
    if depth > MAX_DEPTH + 8:
        raise ProtocolError(f"a reply nested more than {MAX_DEPTH} levels deep")
    if isinstance(x, list):
        return [_from_plain(v, data, offsets, depth + 1) for v in x]
    if not isinstance(x, dict):
        return x
    if "$t" in x:
        return _tensor_from(x, data, offsets)
    if "$dtype" in x:
        return DTYPES[x["$dtype"]]
    if "$device" in x:
        device = torch.device(x["$device"])
        if device.type not in DEVICES:
            raise ProtocolError(f"an unknown device {device}")
        return device
    if "$size" in x:
        return torch.Size(int(n) for n in x["$size"])
    if "$float" in x:
        return float(x["$float"])
    if "$complex" in x:
        re, im = x["$complex"]
        return complex(_from_plain(re, data, offsets, depth + 1), _from_plain(im, data, offsets, depth + 1))
    if "$bytes" in x:
        start, end = offsets[x["$bytes"]]
        return data[start:end]
    return {k: _from_plain(v, data, offsets, depth + 1) for k, v in x.items()}


def _tensor_from(x: dict, data: bytes, offsets: list) -> Tensor:
    dtype = DTYPES[x["dtype"]]
    shape = [int(n) for n in x["shape"]]
    if any(n < 0 for n in shape):
        raise ProtocolError("a negative size")
    device = torch.device(x["device"])
    if device.type not in DEVICES:
        raise ProtocolError(f"an unknown device {device}")
    stride = x.get("stride")
    if device.type == "meta":
        return torch.empty_strided(shape, [int(s) for s in stride], dtype=dtype, device="meta")
    numel = math.prod(shape)
    if x["$t"] is None:
        raise ProtocolError("a tensor without data")
    start, end = offsets[x["$t"]]
    if end - start != numel * dtype.itemsize:
        raise ProtocolError("a tensor whose data has the wrong length")
    if numel == 0:
        flat = torch.empty(0, dtype=dtype)
    else:
        flat = torch.frombuffer(bytearray(data[start:end]), dtype=torch.uint8).view(dtype)
    order = x.get("order")
    if order is not None:
        if sorted(order) != list(range(len(shape))):
            raise ProtocolError("a malformed dim order")
        # Rebuilt with its strides: the memory-order copy, viewed back in the original dim order.
        t = flat.reshape([shape[d] for d in order]).permute([order.index(d) for d in range(len(shape))])
    else:
        t = flat.reshape(shape)
    return t.to(device) if device.type != "cpu" else t


def decode(tree, make_handle: Callable[[dict], object], depth: int = 0, on_tensor: Callable | None = None):
    """The judge's values from an `encode` tree; anything else is a ProtocolError."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"a reply nested more than {MAX_DEPTH} levels deep")
    if isinstance(tree, PLAIN):
        return tree
    if isinstance(tree, dict):
        kind = tree.get("k")
        if kind in ("tuple", "list") and isinstance(tree.get("v"), list):
            items = [decode(x, make_handle, depth + 1, on_tensor) for x in tree["v"]]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict" and isinstance(tree.get("v"), list):
            out = {}
            for pair in tree["v"]:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ProtocolError("a malformed dict in a reply")
                key = decode(pair[0], make_handle, depth + 1, on_tensor)
                try:
                    out[key] = decode(pair[1], make_handle, depth + 1, on_tensor)
                except TypeError:
                    raise ProtocolError("an unhashable dict key in a reply") from None
            return out
        if kind == "tensor" and isinstance(tree.get("data"), Tensor):
            t = decode_tensor(tree)
            if on_tensor is not None and isinstance(tree.get("ref"), int):
                on_tensor(t, tree["ref"])
            return t
        if kind == "handle" and isinstance(tree.get("id"), int):
            return make_handle(tree)
    raise ProtocolError(f"an unexpected {type(tree).__name__} in a reply")


def decode_tensor(tree: dict) -> Tensor:
    t = tree["data"]
    if tree.get("parameter") is True:
        t = torch.nn.Parameter(t, requires_grad=bool(tree.get("requires_grad")))
    elif tree.get("requires_grad") is True and (t.is_floating_point() or t.is_complex()):
        t = t.requires_grad_()
    grad = tree.get("grad")
    if isinstance(grad, Tensor) and grad.shape == t.shape:
        t.grad = grad
    info = {k: tree.get(k) for k in ("storage", "nbytes", "base")}
    if all(v is None or isinstance(v, int) for v in info.values()):
        t.kata_storage = info
    return t
