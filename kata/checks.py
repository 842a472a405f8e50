"""Shared grader machinery: every grader builds its checks from these pieces.

A check fails by raising one of the verdict exceptions below; kata.plugin turns
each into the one-line verdict the learner sees (DESIGN.md, contract 2).
"""

from __future__ import annotations

import fnmatch
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


def _tensors_of(fn, args, kwargs) -> list[tuple[str, Tensor]]:
    """Every tensor the call could modify: its arguments and a module's parameters and buffers."""
    found = []
    leaves, _ = tree_flatten((args, kwargs))
    found += [(f"argument {i}", t) for i, t in enumerate(leaves) if isinstance(t, Tensor)]
    if isinstance(fn, nn.Module):
        found += [(f"module state {n}", t) for n, t in fn.state_dict(keep_vars=True).items()]
    return found


class Rules:
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

    def call(self, fn: Callable, *args, what: str | None = None, may_modify: tuple[Tensor, ...] = (), **kwargs):
        """fn(*args, **kwargs) under the rules; raises RuleBroken if an input was modified.

        `may_modify` names the tensors the call is meant to update in place (batch norm's
        running statistics, say): every other input must come back unchanged."""
        allowed = {id(t) for t in may_modify}
        watched = [(name, t) for name, t in _tensors_of(fn, args, kwargs) if id(t) not in allowed]
        before = [(name, t, t.detach().clone(), t.shape, t.stride()) for name, t in watched]
        with self.enforced():
            out = fn(*args, **kwargs)
        for name, t, copy, shape, stride in before:
            if t.shape != shape or t.stride() != stride or not torch.equal(t.detach(), copy):
                call = what or getattr(fn, "__name__", type(fn).__name__)
                raise RuleBroken(f"{call} modified its input ({name}, {describe(copy)}) in place; work on new tensors")
        return out


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


def expect_raises(exc_type: type[BaseException], fn: Callable, *args, what: str, **kwargs) -> None:
    """fn must raise exc_type. NotImplementedError (a stub) passes through unchanged."""
    try:
        result = fn(*args, **kwargs)
    except exc_type:
        return
    except NotImplementedError:
        raise
    except Exception as exc:
        raise Wrong(f"{what} raised {type(exc).__name__}: {exc}; expected {exc_type.__name__}") from exc
    raise Wrong(f"{what} returned {describe(result)}; expected it to raise {exc_type.__name__}")


# ---------------------------------------------------------------- work and speed


class _CountOps(TorchDispatchMode):
    """Counts the aten ops that do work. Views are left out: whether a reshape is a view
    or a copy depends on the sizes (a single head is contiguous), not on how the code is
    written, and a Python loop shows up in the compute ops anyway."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not func.is_view and name != "aten._unsafe_view":
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


_skip_dynamo_import(_CountOps)


def count_ops(fn: Callable, *args, **kwargs) -> Counter[str]:
    """How many times each aten op runs during fn(*args, **kwargs)."""
    mode = _CountOps()
    with torch.no_grad(), mode:
        fn(*args, **kwargs)
    return mode.counts


def expect_same_op_count(small: Counter, large: Counter, *, what: str, small_desc: str, large_desc: str) -> None:
    """Vectorised code issues the same ops whatever the batch or head count."""
    n_small, n_large = sum(small.values()), sum(large.values())
    if n_small == n_large:
        return
    grew = ", ".join(f"{op} {small[op]}->{large[op]}" for op in sorted(large) if large[op] > small[op])
    raise Wrong(
        f"{what} runs {n_small} aten ops for {small_desc} but {n_large} for {large_desc} "
        f"(grew: {grew or 'none'}): a Python loop over them? Use batched tensor ops."
    )


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """Floating-point operations of fn(*args, **kwargs) as torch's FlopCounterMode counts
    them (matmuls, convolutions and attention kernels; elementwise ops count 0)."""
    from torch.utils import flop_counter

    # Its inner dispatch mode would import torch._dynamo on first use (2-3 s) for nothing, as above.
    if hasattr(flop_counter, "_FlopCounterMode"):
        _skip_dynamo_import(flop_counter._FlopCounterMode)
    counter = flop_counter.FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def speed_ratio(
    learner: Callable[[], object],
    reference: Callable[[], object],
    *,
    device: torch.device,
    warmup: int = 2,
    min_rounds: int = 5,
    max_rounds: int = 60,
    budget_s: float = 1.0,
) -> float:
    """Learner time / reference time: the median, over interleaved rounds, of the ratio
    of the two calls made back to back, measured in this process.

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
                learner()
                reference()
            ratios = []
            start = time.perf_counter()
            for i in range(max_rounds):
                if i % 2:
                    t_learner = timed(learner)
                    t_reference = timed(reference)
                else:
                    t_reference = timed(reference)
                    t_learner = timed(learner)
                ratios.append(t_learner / t_reference)
                if i + 1 >= min_rounds and time.perf_counter() - start > budget_s:
                    break
    finally:
        torch.set_num_threads(threads)
    return statistics.median(ratios)


def expect_fast_enough(ratio: float, limit: float, *, what: str, device: torch.device) -> None:
    if ratio > limit:
        raise TooSlow(
            f"{what} took {ratio:.1f}x the reference solution's time on {device.type} (limit {limit:g}x); "
            "look for Python loops, repeated work or needless copies"
        )
