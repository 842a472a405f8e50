"""The trusted harness that runs learner code under a kata's rules and measures it.

It lives in the executor process (kata.executor), loaded before the learner's module:
forbidden ops are caught by a TorchFunctionMode and a TorchDispatchMode together, inputs
and module state are compared before and after, aten ops and FLOPs are counted, and
learner and reference are timed side by side. The judge (kata.checks.Rules) asks for each
of these and receives plain data back. A submission runs in the same process as this
harness, so it could tamper with what the harness reports about rules, work and speed;
values it cannot forge, because they are compared in the judge (README, "What a
submission could still fake").
"""

from __future__ import annotations

import fnmatch
import functools
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kata import lazy_dynamo
from kata.verdicts import RuleBroken

# Every process that grades (judge and executor, forked or spawned) imports this module
# before any check runs: from here on, torch's own functions stop importing torch._dynamo.
lazy_dynamo.defer()

# ---------------------------------------------------------------- forbidden ops


# Both are asked for every op a rule-checked call runs (thousands per grading), with few
# distinct answers: cached. (resolve_name enters a warnings.catch_warnings each time.)
@functools.cache
def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


_NAMES: dict = {}


def _function_name(func) -> str:
    try:
        return _NAMES[func]
    except KeyError:
        name = _NAMES[func] = resolve_name(func) or getattr(func, "__name__", str(func))
        return name
    except TypeError:  # unhashable
        return resolve_name(func) or getattr(func, "__name__", str(func))


class _ForbidFunctions(TorchFunctionMode):
    """Catches forbidden calls at the Python API level.

    Needed besides the dispatch mode: composite ops (such as
    aten._scaled_dot_product_attention_math, or nn.MultiheadAttention's
    weighted path) decompose into plain matmuls before reaching the dispatcher's
    Python key, so only their torch-function entry shows who was called.
    """

    def __init__(self, patterns, hits):
        super().__init__()
        self.patterns, self.hits = patterns, hits

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _function_name(func)
        if _match(name, self.patterns):
            self.hits.append(name)
            raise RuleBroken(f"called {name}, which this kata forbids")
        return func(*args, **(kwargs or {}))


class _ForbidOps(TorchDispatchMode):
    """Catches forbidden aten ops however they were reached (aliases, torch.ops, Tensor methods)."""

    def __init__(self, patterns, hits):
        super().__init__()
        self.patterns, self.hits = patterns, hits

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)  # e.g. aten._scaled_dot_product_flash_attention_for_cpu.default
        if _match(name, self.patterns):
            self.hits.append(name)
            raise RuleBroken(f"called the aten op {name}, which this kata forbids")
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- what a call touches


def _same_values(a: Tensor, b: Tensor) -> bool:
    """Equal, a nan where the other has a nan counting as equal (an input holding nan is
    not modified by being read)."""
    if torch.equal(a, b):
        return True
    return (a.is_floating_point() or a.is_complex()) and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


class CallWatch:
    """Forbids Python code that no dispatch mode sees (torch.optim's step functions,
    clip_grad_norm_, GradScaler, a concrete LRScheduler): a profile hook, set around a call
    into learner code in the executor, records every call into code that `name_of(code)`
    names (None: allowed), however it was imported, bound or subclassed; on leaving, the
    first one named is a RuleBroken, `advice` appended to its message. A profiler already
    installed (a debugger, cProfile) is left alone: the hook cannot chain to it."""

    def __init__(self, name_of: Callable[[object], str | None], advice: str = "", on: bool = True):
        self.name_of, self.advice, self.on, self.hit = name_of, advice, on, None

    def _hook(self, frame, event, arg):
        if event == "call" and self.hit is None:
            self.hit = self.name_of(frame.f_code)

    def __enter__(self):
        self.on = self.on and sys.getprofile() is None
        if self.on:
            sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc):
        if self.on:
            sys.setprofile(None)
            if self.hit is not None:
                raise RuleBroken(f"called {self.hit}, which this kata forbids{self.advice}")
        return False


def unwrap(fn, args=(), kwargs=None):
    """fn, args and kwargs with any functools.partial layers folded in, so that a call
    built as a partial (the speed checks build them) has its tensors watched like any other."""
    kwargs = dict(kwargs or {})
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    return fn, tuple(args), kwargs


def name_of(fn) -> str:
    fn, _, _ = unwrap(fn)
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def tensors_of(fn, args, kwargs) -> list[tuple[str, Tensor]]:
    """Every tensor the call could modify: its arguments and a module's parameters and buffers."""
    fn, args, kwargs = unwrap(fn, args, kwargs)
    found = []
    leaves, _ = tree_flatten((args, kwargs))
    found += [(f"argument {i}", t) for i, t in enumerate(leaves) if isinstance(t, Tensor)]
    if isinstance(fn, nn.Module):
        found += [(f"module state {n}", t) for n, t in fn.state_dict(keep_vars=True).items()]
    return found


def describe(x) -> str:
    if isinstance(x, Tensor):
        shape = tuple(x.shape)
        extra = "" if x.is_contiguous() or x.dim() < 2 else ", non-contiguous"
        return f"{str(x.dtype).removeprefix('torch.')} {shape}{extra}"
    if isinstance(x, float):
        return f"{x:g}"
    return repr(x)


# ---------------------------------------------------------------- recording ops


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    storage: int  # address of its storage: views and in-place results share their input's

    @classmethod
    def of(cls, t: Tensor) -> TensorInfo:
        try:
            storage = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
            storage = -1
        return cls(t.dtype, tuple(t.shape), storage)


@dataclass(frozen=True)
class Op:
    """One aten op a call ran, as Harness.record_ops saw it."""

    name: str  # the overload packet, e.g. "aten.mean"
    is_view: bool
    inputs: tuple[TensorInfo, ...]  # its tensor arguments
    outputs: tuple[TensorInfo, ...]  # the tensors it returned

    def new_tensors(self) -> list[TensorInfo]:
        """The outputs in memory none of its inputs had (not views, not in-place results)."""
        known = {t.storage for t in self.inputs}
        return [t for t in self.outputs if t.storage not in known]


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins, _ = tree_flatten((args, kwargs))
        outs, _ = tree_flatten(out)
        self.ops.append(
            Op(
                name=str(func.overloadpacket),
                is_view=func.is_view,
                inputs=tuple(TensorInfo.of(t) for t in ins if isinstance(t, Tensor)),
                outputs=tuple(TensorInfo.of(t) for t in outs if isinstance(t, Tensor)),
            )
        )
        return out



def op_to_data(op: Op) -> dict:
    """An Op as plain data, to cross to the judge (kata.checks.op_from_data reads it)."""

    def info(t: TensorInfo) -> list:
        return [t.dtype, list(t.shape), t.storage]

    return {"name": op.name, "view": op.is_view, "in": [info(t) for t in op.inputs], "out": [info(t) for t in op.outputs]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def straddles(ratios: list[float], limit: float) -> bool:
    """Whether the distribution-free 95% interval of the median of `ratios` contains `limit`:
    the order statistics n/2 -+ 0.98 sqrt(n) (the binomial's normal approximation)."""
    s = sorted(ratios)
    n = len(s)
    half = 0.98 * math.sqrt(n)
    low, high = s[max(0, math.floor(n / 2 - half))], s[min(n - 1, math.ceil(n / 2 + half) - 1)]
    return low <= limit <= high


# ---------------------------------------------------------------- the harness


class Harness:
    """Runs learner code under a kata's rules: forbidden ops and unmodified inputs."""

    def __init__(self, forbidden: tuple[str, ...]):
        self.forbidden = tuple(forbidden)

    @contextmanager
    def enforced(self) -> Iterator[None]:
        hits: list[str] = []
        try:
            with _ForbidFunctions(self.forbidden, hits), _ForbidOps(self.forbidden, hits):
                yield
        finally:
            # Recorded as well as raised: a learner's try/except cannot hide a violation.
            if hits:
                raise RuleBroken(f"called {hits[0]}, which this kata forbids: build it from smaller ops")

    @contextmanager
    def unchanged(self, fn, args=(), kwargs=None, *, what: str | None = None, may_modify: tuple[Tensor, ...] = ()) -> Iterator[None]:
        """Raises RuleBroken after the block if it modified a tensor of the call
        fn(*args, **kwargs) other than those in `may_modify` (the tensors the call is meant
        to update in place: batch norm's running statistics, say)."""
        allowed = {id(t) for t in may_modify}
        watched = [(name, t) for name, t in tensors_of(fn, args, kwargs) if id(t) not in allowed]
        before = [(name, t, t.detach().clone(), t.shape, t.stride()) for name, t in watched]
        yield
        for name, t, copy, shape, stride in before:
            # Meta tensors have no values to compare: their shape and strides still count.
            same = t.is_meta or _same_values(t.detach(), copy)
            if t.shape != shape or t.stride() != stride or not same:
                call = what or name_of(fn)
                raise RuleBroken(f"{call} modified its input ({name}, {describe(copy)}) in place; work on new tensors")

    def call(self, fn: Callable, args=(), kwargs=None, *, what=None, may_modify=(), backward: Tensor | None = None):
        """fn(*args, **kwargs) under the rules. With `backward`, the output's backward
        with that upstream gradient runs under the rules too (when the output is a tensor
        of its shape with autograd history: otherwise the judge reports what came back)."""
        kwargs = kwargs or {}
        with self.unchanged(fn, args, kwargs, what=what, may_modify=may_modify), self.enforced():
            out = fn(*args, **kwargs)
            if backward is not None and isinstance(out, Tensor) and out.requires_grad and out.shape == backward.shape:
                out.backward(backward)
        return out

    def record_ops(self, fn: Callable, args=(), kwargs=None, *, may_modify=()) -> list[Op]:
        """Every aten op fn(*args, **kwargs) runs (under no_grad and the rules), in order."""
        kwargs = kwargs or {}
        mode = _RecordOps()
        with torch.no_grad(), self.unchanged(fn, args, kwargs, may_modify=may_modify), self.enforced(), mode:
            fn(*args, **kwargs)
        return mode.ops

    def count_ops(self, fn: Callable, args=(), kwargs=None, *, may_modify=()) -> Counter[str]:
        """How many times each aten op that does work runs during fn(*args, **kwargs).
        Views are left out: whether a reshape is a view or a copy depends on the sizes (a
        single head is contiguous), not on how the code is written, and a Python loop shows
        up in the compute ops anyway."""
        ops = self.record_ops(fn, args, kwargs, may_modify=may_modify)
        return Counter(op.name for op in ops if not op.is_view and op.name != "aten._unsafe_view")

    def count_flops(self, fn: Callable, args=(), kwargs=None, *, may_modify=()) -> int:
        """Floating-point operations of fn(*args, **kwargs) as torch's FlopCounterMode counts
        them (matmuls, convolutions and attention kernels; elementwise ops count 0)."""
        from torch.utils import flop_counter

        kwargs = kwargs or {}
        counter = flop_counter.FlopCounterMode(display=False)
        with torch.no_grad(), self.unchanged(fn, args, kwargs, may_modify=may_modify), self.enforced(), counter:
            fn(*args, **kwargs)
        return counter.get_total_flops()

    def speed_ratio(
        self,
        learner: Callable[[], object],
        reference: Callable[[], object],
        *,
        device: torch.device,
        near: float | None = None,
        at_least: bool = False,
        may_modify: tuple[Tensor, ...] = (),
        warmup: int = 1,
        min_rounds: int = 5,
        early_rounds: int = 10,
        max_rounds: int = 60,
        budget_s: float = 1.0,
        extra_budget_s: float = 3.0,
    ) -> float:
        """learner time / reference time: the median, over interleaved rounds, of the ratio
        of the two calls made back to back. Both are zero-argument calls, best built with
        functools.partial, so the rules see their tensors.

        The warm-up calls run under the rules (forbidden ops, unmodified inputs other than
        `may_modify`); the timed ones run bare, because the rule modes' per-op Python cost
        would be timed with the code (measured: 3x on cached generation, 1.3x on
        MultiHeadAttention) and pull every ratio towards 1.

        `near` is the limit the ratio will be compared with (a maximum, or with `at_least`
        a minimum). Rounds stop as soon as the median's 95% interval is clearly on the
        passing side of it (after `early_rounds`; after `min_rounds` already when every
        round so far is a factor of 2 on the passing side: fast code is decided in a few
        rounds); on
        the failing side only after `budget_s`, as without `near`, so the reference fails
        no more often than it did with the full budget; and while the interval still
        contains the limit they go on for up to `budget_s + extra_budget_s` seconds in all,
        so code close to the limit gets its verdict from more evidence instead of from one
        second's noise. Without `near`, rounds run for `budget_s` (at most `max_rounds`).

        Calibrated on a busy 2-core machine (README, "Speed thresholds"): a ratio per round
        compares two calls made under the same load, and alternating which runs first
        spreads drift evenly. On the CPU both run on one thread, because with several, one
        thread descheduled by another process stalls a whole parallel region and the
        ratio of the solution to itself swung up to 3x.
        """

        def timed(fn) -> float:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            return time.perf_counter() - start

        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                for _ in range(warmup):
                    self.call(learner, may_modify=may_modify)
                    self.call(reference, may_modify=may_modify)
                ratios: list[float] = []
                start = time.perf_counter()

                def round_(i: int) -> None:
                    if i % 2:
                        t_learner = timed(learner)
                        t_reference = timed(reference)
                    else:
                        t_reference = timed(reference)
                        t_learner = timed(learner)
                    ratios.append(t_learner / t_reference)

                while True:
                    round_(len(ratios))
                    elapsed = time.perf_counter() - start
                    if len(ratios) < min_rounds:
                        continue
                    if near is None:
                        if elapsed > budget_s or len(ratios) >= max_rounds:
                            break
                        continue
                    if elapsed > budget_s + extra_budget_s:
                        break  # as clear as the time allows
                    if straddles(ratios, near):
                        continue
                    passing = (statistics.median(ratios) >= near) if at_least else (statistics.median(ratios) <= near)
                    # Every round, not only the median, a factor of 2 on the passing side:
                    # decided after min_rounds (most correct code is, in a tenth of a second).
                    clearly = (min(ratios) >= 2 * near) if at_least else (max(ratios) <= near / 2)
                    # A pass may be decided early; a failure only with the whole budget's
                    # evidence, as before: the reference cannot fail on a few unlucky rounds.
                    if (passing and (clearly or len(ratios) >= early_rounds)) or elapsed > budget_s:
                        break
        finally:
            torch.set_num_threads(threads)
        return statistics.median(ratios)


# ---------------------------------------------------------------- helpers graders run in the executor


@functools.cache
def _lazily_seeded_devices() -> bool:
    """Whether torch has a device whose generator torch.manual_seed seeds lazily."""
    return torch.cuda.is_available() or torch.xpu.is_available() or torch.mtia.is_available()


def seed_torch(value: int) -> None:
    """torch.manual_seed(value), without its cost where it does nothing: for each of cuda,
    xpu and mtia, even absent, it queues a lazy seeding and formats the caller's stack for
    it (65 checks, each seeding judge and executor: about 0.25 s of an attention grading
    on the loaded CI machine, deep in pytest's stack)."""
    if _lazily_seeded_devices():
        torch.manual_seed(value)
        return
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(value)
    torch.default_generator.manual_seed(value)


def assign_parameters(module: nn.Module, values: dict[str, Tensor]) -> None:
    """Copy `values` into the module's parameters of those names, in place (seeded weights)."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def storage_bytes(t: Tensor) -> Tensor:
    """Every byte of the storage behind t (not only the part t shows), as a flat uint8 tensor.
    Bytes, not values: storage from torch.empty may hold NaNs, and NaN != NaN."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()
