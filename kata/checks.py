"""Shared grader machinery: every grader builds its checks from these pieces.

A check fails by raising one of the verdict exceptions below; kata.plugin turns
each into the one-line verdict the learner sees (DESIGN.md, contract 2).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import statistics
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


class Wrong(AssertionError):
    """The learner's code returned something other than what torch gives."""


class RuleBroken(AssertionError):
    """The learner's code called a forbidden op or modified an input."""


class TooSlow(AssertionError):
    """The learner's code is measurably slower than the kata allows."""


# ---------------------------------------------------------------- inputs and devices


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; a named device must be available."""
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if name not in available:
        raise ValueError(f"unknown device '{name}': choose auto, cpu, cuda or mps")
    if not available[name]:
        raise ValueError(f"device '{name}' is not available to this torch ({torch.__version__}); see README for a CUDA build")
    return torch.device(name)


def dtype_unsupported(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why `device` cannot run matmul and softmax in `dtype`, or None if it can."""
    try:
        x = torch.ones(4, 4, dtype=dtype, device=device)
        torch.softmax(x @ x, dim=-1).sum().item()
    except (RuntimeError, TypeError) as exc:
        return f"{device.type} cannot compute in {dtype}: {str(exc).splitlines()[0]}"
    return None


def need_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Skip the check, with the reason, when the device cannot compute in dtype (never a silent pass)."""
    import pytest

    reason = dtype_unsupported(dtype, device)
    if reason:
        pytest.skip(reason)


def randn(*shape: int, seed: int, device, dtype=torch.float32, scale: float = 1.0) -> Tensor:
    """Seeded normal values, identical on every device (drawn on the CPU in float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    return x.to(device=device, dtype=dtype)


def golden(t):
    """A float64 CPU copy of a floating tensor (keeping autograd tracking), for computing
    torch's reference. Bool and integer tensors (masks, indices) keep their dtype: a bool
    mask turned into 0/1 floats would change meaning. Anything else passes unchanged."""
    if not isinstance(t, Tensor):
        return t
    if not t.is_floating_point():
        return t.detach().to("cpu")
    return t.detach().to("cpu", torch.float64).requires_grad_(t.requires_grad)


# ---------------------------------------------------------------- describing calls


def describe(x) -> str:
    if isinstance(x, Tensor):
        shape = tuple(x.shape)
        extra = "" if x.is_contiguous() or x.dim() < 2 else ", non-contiguous"
        return f"{str(x.dtype).removeprefix('torch.')} {shape}{extra}"
    if isinstance(x, float):
        return f"{x:g}"
    return repr(x)


def describe_call(name: str, *args, **kwargs) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


# ---------------------------------------------------------------- rules


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


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
        name = resolve_name(func) or getattr(func, "__name__", str(func))
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


def _skip_dynamo_import(mode_cls: type[TorchDispatchMode]) -> type[TorchDispatchMode]:
    """TorchDispatchMode wraps __torch_dispatch__ so that its first call imports
    torch._dynamo (about 2 s, close to half of a whole check) only to keep the handler
    out of torch.compile's tracing. Graders never compile their modes, so mark the raw
    handler as its own "disabled" version and torch skips the import. Should torch change
    this detail, the only cost is the import again."""
    raw = getattr(mode_cls.__torch_dispatch__, "__wrapped__", None)
    if raw is not None:
        raw.__dynamo_disable = raw
    return mode_cls


_skip_dynamo_import(_ForbidOps)




def _unwrap(fn, args=(), kwargs=None):
    """fn, args and kwargs with any functools.partial layers folded in, so that a call
    built as a partial (the speed checks build them) has its tensors watched like any other."""
    kwargs = dict(kwargs or {})
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    return fn, tuple(args), kwargs


def _name_of(fn) -> str:
    fn, _, _ = _unwrap(fn)
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _tensors_of(fn, args, kwargs) -> list[tuple[str, Tensor]]:
    """Every tensor the call could modify: its arguments and a module's parameters and buffers."""
    fn, args, kwargs = _unwrap(fn, args, kwargs)
    found = []
    leaves, _ = tree_flatten((args, kwargs))
    found += [(f"argument {i}", t) for i, t in enumerate(leaves) if isinstance(t, Tensor)]
    if isinstance(fn, nn.Module):
        found += [(f"module state {n}", t) for n, t in fn.state_dict(keep_vars=True).items()]
    return found


class Rules:
    """Runs learner code under a kata's rules: forbidden ops and unmodified inputs.

    Every call a grader makes into learner code goes through a method of this class
    (call, expect_raises, count_ops, record_ops, count_flops, speed_ratio), whichever check
    makes it: a rule enforced only by the value checks let op-count and speed checks pass
    code that calls the very op the kata rebuilds. tests/test_rules_everywhere.py proves it
    for every check of every topic.
    """

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
        watched = [(name, t) for name, t in _tensors_of(fn, args, kwargs) if id(t) not in allowed]
        before = [(name, t, t.detach().clone(), t.shape, t.stride()) for name, t in watched]
        yield
        for name, t, copy, shape, stride in before:
            # Meta tensors have no values to compare: their shape and strides still count.
            same = t.is_meta or torch.equal(t.detach(), copy)
            if t.shape != shape or t.stride() != stride or not same:
                call = what or _name_of(fn)
                raise RuleBroken(f"{call} modified its input ({name}, {describe(copy)}) in place; work on new tensors")

    def call(self, fn: Callable, *args, what: str | None = None, may_modify: tuple[Tensor, ...] = (), **kwargs):
        """fn(*args, **kwargs) under the rules; raises RuleBroken if it called a forbidden
        op or modified an input (other than those in `may_modify`)."""
        with self.unchanged(fn, args, kwargs, what=what, may_modify=may_modify), self.enforced():
            return fn(*args, **kwargs)

    def expect_raises(self, exc_type: type[BaseException], fn: Callable, *args, what: str, **kwargs) -> None:
        """fn must raise exc_type, under the rules. NotImplementedError (a stub) and a
        broken rule pass through unchanged."""
        try:
            result = self.call(fn, *args, what=what, **kwargs)
        except exc_type:
            return
        except (NotImplementedError, RuleBroken):
            raise
        except Exception as exc:
            raise Wrong(f"{what} raised {type(exc).__name__}: {exc}; expected {exc_type.__name__}") from exc
        raise Wrong(f"{what} returned {describe(result)}; expected it to raise {exc_type.__name__}")

    def record_ops(self, fn: Callable, *args, may_modify: tuple[Tensor, ...] = (), **kwargs) -> list[Op]:
        """Every aten op fn(*args, **kwargs) runs (under no_grad and the rules), in order."""
        mode = _RecordOps()
        with torch.no_grad(), self.unchanged(fn, args, kwargs, may_modify=may_modify), self.enforced(), mode:
            fn(*args, **kwargs)
        return mode.ops

    def count_ops(self, fn: Callable, *args, may_modify: tuple[Tensor, ...] = (), **kwargs) -> Counter[str]:
        """How many times each aten op that does work runs during fn(*args, **kwargs).
        Views are left out: whether a reshape is a view or a copy depends on the sizes (a
        single head is contiguous), not on how the code is written, and a Python loop shows
        up in the compute ops anyway."""
        ops = self.record_ops(fn, *args, may_modify=may_modify, **kwargs)
        return Counter(op.name for op in ops if not op.is_view and op.name != "aten._unsafe_view")

    def count_flops(self, fn: Callable, *args, **kwargs) -> int:
        """Floating-point operations of fn(*args, **kwargs) as torch's FlopCounterMode counts
        them (matmuls, convolutions and attention kernels; elementwise ops count 0)."""
        from torch.utils import flop_counter

        # Its inner dispatch mode would import torch._dynamo on first use (2-3 s) for nothing, as above.
        if hasattr(flop_counter, "_FlopCounterMode"):
            _skip_dynamo_import(flop_counter._FlopCounterMode)
        counter = flop_counter.FlopCounterMode(display=False)
        with torch.no_grad(), self.unchanged(fn, args, kwargs), self.enforced(), counter:
            fn(*args, **kwargs)
        return counter.get_total_flops()

    def speed_ratio(
        self,
        learner: Callable[[], object],
        reference: Callable[[], object],
        *,
        device: torch.device,
        near: float | None = None,
        may_modify: tuple[Tensor, ...] = (),
        warmup: int = 2,
        min_rounds: int = 5,
        max_rounds: int = 60,
        budget_s: float = 1.0,
        extra_budget_s: float = 3.0,
    ) -> float:
        """learner time / reference time: the median, over interleaved rounds, of the ratio
        of the two calls made back to back, measured in this process. Build both calls with
        functools.partial, so the rules see their tensors.

        The warm-up calls run under the rules (forbidden ops, unmodified inputs other than
        `may_modify`); the timed ones run bare, because the rule modes' per-op Python cost
        would be timed with the code (measured: 3x on cached generation, 1.3x on
        MultiHeadAttention) and pull every ratio towards 1.

        `near` is the limit the ratio will be compared with. While the median's 95%
        interval still contains it, rounds go on for up to `extra_budget_s` more seconds,
        so code whose speed sits close to the limit gets its verdict from more evidence
        instead of from one second's noise.

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

                for i in range(max_rounds):
                    round_(i)
                    if i + 1 >= min_rounds and time.perf_counter() - start > budget_s:
                        break
                if near is not None:
                    while _straddles(ratios, near) and time.perf_counter() - start < budget_s + extra_budget_s:
                        round_(len(ratios))
        finally:
            torch.set_num_threads(threads)
        return statistics.median(ratios)


def _straddles(ratios: list[float], limit: float) -> bool:
    """Whether the distribution-free 95% interval of the median of `ratios` contains `limit`:
    the order statistics n/2 -+ 0.98 sqrt(n) (the binomial's normal approximation)."""
    s = sorted(ratios)
    n = len(s)
    half = 0.98 * math.sqrt(n)
    low, high = s[max(0, math.floor(n / 2 - half))], s[min(n - 1, math.ceil(n / 2 + half) - 1)]
    return low <= limit <= high

# ---------------------------------------------------------------- values


# torch.testing.assert_close's defaults, per dtype: (rtol, atol).
DEFAULT_TOLERANCE = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
# How many times torch's own error in the same dtype a learner may have (the rule
# PyTorch's SDPA tests use for low precision).
FUDGE = 4.0


def max_error(actual: Tensor, expected: Tensor) -> float:
    """The largest |actual - expected|; equal elements (matching infinities too) count as 0."""
    a, e = actual.detach().to("cpu", torch.float64), expected.detach().to("cpu", torch.float64)
    return torch.where(a == e, 0.0, (a - e).abs()).max().item()


def unfused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, scale: float | None = None) -> Tensor:
    """torch's unfused (math) attention kernel, in q's dtype: the error a plain implementation
    is bound to make, the baseline of the half-precision tolerances of attention checks.

    `mask` is bool (True = may attend) or additive float. The math op adds whatever mask it
    is given to the scores, so a bool mask is turned into 0 / -inf first; only
    F.scaled_dot_product_attention converts it itself. Adding 1.0 / 0.0 instead made "torch's
    own error" 1.86 in bfloat16, and so a tolerance wide enough for code ignoring every mask.
    """
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask=mask, scale=scale)[0]


def expect_tensor(actual, *, shape, dtype, device, what: str) -> None:
    if not isinstance(actual, Tensor):
        raise Wrong(f"{what} returned {type(actual).__name__}, expected a Tensor")
    if tuple(actual.shape) != tuple(shape):
        raise Wrong(f"{what} returned shape {tuple(actual.shape)}, expected {tuple(shape)}")
    if actual.dtype != dtype:
        raise Wrong(f"{what} returned dtype {actual.dtype}, expected {dtype}")
    if actual.device.type != torch.device(device).type:
        raise Wrong(f"{what} returned a tensor on {actual.device}, expected {device}")


def expect_close(actual, expected: Tensor, *, what: str, dtype: torch.dtype, device: torch.device, baseline: Tensor | None = None) -> None:
    """Compare `actual` with a float64 golden `expected`.

    The tolerance is torch.testing's default for `dtype`, widened by FUDGE times
    the error torch's own op makes in that dtype (`baseline`, same golden), so
    nobody is asked to be more precise than torch itself.
    """
    expect_tensor(actual, shape=expected.shape, dtype=dtype, device=device, what=what)
    got = actual.detach().to("cpu", torch.float64)
    exp = expected.detach().to("cpu", torch.float64)
    rtol, atol = DEFAULT_TOLERANCE.get(dtype, (0.0, 0.0))
    extra = FUDGE * max_error(baseline, exp) if baseline is not None else 0.0
    allowed = atol + extra + rtol * exp.abs()
    err = (got - exp).abs()
    same = got == exp  # equal infinities have a nan difference
    bad = ~same & ~(err <= allowed)  # ~(<=) so a nan counts as bad
    if not bad.any():
        return
    score = torch.where(bad, err.nan_to_num(math.inf), torch.zeros_like(err))
    idx = tuple(int(i) for i in torch.unravel_index(score.argmax(), score.shape))
    tol = f"{atol:.1e} + {rtol:.1e} * |expected|"
    if baseline is not None:
        tol += f" + {FUDGE:g} x torch's own {str(dtype).removeprefix('torch.')} error"
        tol += f" ({extra / FUDGE:.1e})"
    raise Wrong(
        f"{what} gave wrong values:\n"
        f"  max abs error {err[idx].item():.3g} at index {idx}: got {got[idx].item():.6g}, expected {exp[idx].item():.6g}\n"
        f"  {int(bad.sum())} of {bad.numel()} elements outside the tolerance {tol}"
    )



# ---------------------------------------------------------------- work and speed


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
    """One aten op a call ran, as Rules.record_ops saw it."""

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


_skip_dynamo_import(_RecordOps)


def expect_same_op_count(
    small: Callable[[], Counter], large: Callable[[], Counter], *, what: str, small_desc: str, large_desc: str
) -> None:
    """Vectorised code issues the same ops whatever the batch or head count.

    `small` and `large` each count one call (Rules.count_ops on fresh inputs). Each size is
    counted twice, and five times when the two sizes disagree: a count that changes between
    calls on the same input (random draws, such as the rejection sampling in
    nn.init.trunc_normal_) says nothing about loops, and is reported as such."""
    sizes = [(small_desc, small, [small(), small()]), (large_desc, large, [large(), large()])]
    if not all(counts[0] == counts[1] for _, _, counts in sizes) or sizes[0][2][0] != sizes[1][2][0]:
        for _, count, counts in sizes:
            counts += [count() for _ in range(3)]
    varying = [
        (desc, op, "/".join(str(c[op]) for c in counts))
        for desc, _, counts in sizes
        for op in sorted(set().union(*counts))
        if len({c[op] for c in counts}) > 1
    ]
    if varying:
        shown = "; ".join(f"{op} ran {runs} times on {desc}" for desc, op, runs in varying[:3])
        more = f"; {len(varying) - 3} more ops vary" if len(varying) > 3 else ""
        raise Wrong(
            f"{what} does not run the same aten ops each time it is called on the same input ({shown}{more}), "
            "so its op count cannot show whether it loops. Does it draw random numbers or build a module on every "
            "call? Make every call do the same work."
        )
    s, l = sizes[0][2][0], sizes[1][2][0]
    n_small, n_large = sum(s.values()), sum(l.values())
    if n_small == n_large:
        return
    grew = ", ".join(f"{op} {s[op]}->{l[op]}" for op in sorted(l) if l[op] > s[op])
    raise Wrong(
        f"{what} runs {n_small} aten ops for {small_desc} but {n_large} for {large_desc} "
        f"(grew: {grew or 'none'}): a Python loop over them? Use batched tensor ops."
    )


# Ops that sum many values into few: where a statistic's precision is decided.
REDUCTIONS = frozenset(
    "aten." + name
    for name in (
        "mean", "sum", "nansum", "nanmean", "var", "var_mean", "std", "std_mean", "linalg_vector_norm", "norm",
        "cumsum", "dot", "mv", "mm", "bmm", "addmm", "baddbmm", "addbmm", "einsum",
    )
)  # fmt: skip
HALF = (torch.float16, torch.bfloat16)


def expect_reductions_in_float32(ops: list[Op], given: list[Tensor], *, what: str) -> None:
    """Every reduction among `ops` (Rules.record_ops of one call) works in float32 or wider:
    it returns no half-precision tensor, and reads none that the call computed (a tensor of
    `given`, the call's own inputs, may be read as it is: mean(x, dtype=torch.float32)).
    In bfloat16 the values alone cannot show this: torch's reductions accumulate in float32
    internally, so x.square().mean() in bfloat16 stays inside bfloat16's tolerance; float16
    shows it only where x^2 overflows."""
    own = {TensorInfo.of(t).storage for t in given}
    for op in ops:
        if op.name not in REDUCTIONS:
            continue
        out = next((t.dtype for t in op.outputs if t.dtype in HALF), None)
        computed = next((t.dtype for t in op.inputs if t.dtype in HALF and t.storage not in own), None)
        if out is not None or computed is not None:
            dtype = str(out or computed).removeprefix("torch.")
            how = f"returns {dtype}" if out is not None else f"reads {dtype} values it computed"
            raise Wrong(
                f"{what} runs {op.name} in half precision (it {how}): the statistics must be computed in "
                "float32; convert x to float32 before squaring and reducing, and the result back at the end"
            )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def expect_fast_enough(ratio: float, limit: float, *, what: str, device: torch.device) -> None:
    if ratio > limit:
        raise TooSlow(
            f"{what} took {ratio:.1f}x the reference solution's time on {device.type} (limit {limit:g}x); "
            "look for Python loops, repeated work or needless copies"
        )
