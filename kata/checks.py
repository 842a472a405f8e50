"""Shared grader machinery, on the judge's side: every grader builds its checks from these pieces.

A check fails by raising one of the verdict exceptions (kata.verdicts); kata.plugin turns
each into the one-line verdict the learner sees (DESIGN.md, contract 2). Learner code never
runs here: `Rules` sends each call to the executor that holds it (kata.judge), where the
harness (kata.harness) applies the rules and measures, and the values that come back are
compared here with torch's own, computed here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from kata import harness
from kata.harness import Op, TensorInfo
from kata.judge import Remote, find_executor
from kata.verdicts import RuleBroken, TooSlow, Wrong

__all__ = ["Op", "RuleBroken", "Rules", "TensorInfo", "TooSlow", "Wrong"]


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
    if isinstance(x, Remote):
        return x.kata_type
    return harness.describe(x)


def describe_call(name: str, *args, **kwargs) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


# ---------------------------------------------------------------- rules


class Recording(list):
    """The ops one call ran (Op, in order), and the storages of the call's own tensors."""

    input_storages: tuple[int, ...] = ()


class Rules:
    """The kata's rules (forbidden ops, unmodified inputs) on every call a grader makes into
    learner code, whichever check makes it: a rule enforced only by the value checks once
    let op-count and speed checks pass code calling the very op the kata rebuilds
    (tests/test_rules_everywhere.py proves it for every check of every topic).

    A call whose function or arguments hold a Remote goes to that executor, which runs it
    under kata.harness and sends back the result; with no Remote (the machinery's own
    tests) the harness runs here.
    """

    def __init__(self, forbidden: tuple[str, ...]):
        self.forbidden = tuple(forbidden)
        self._harness = harness.Harness(self.forbidden)

    def _run(self, mode: str, fn, args, kwargs, **options):
        ex = find_executor(fn, args, kwargs)
        if ex is not None:
            return ex.call(fn, args, kwargs, mode=mode, forbidden=self.forbidden, **options)
        h = self._harness
        may_modify = options.get("may_modify", ())
        if mode == "call":
            return h.call(fn, args, kwargs, what=options.get("what"), may_modify=may_modify, backward=options.get("backward"))
        if mode == "record_ops":
            return [harness.op_to_data(op) for op in h.record_ops(fn, args, kwargs, may_modify=may_modify)], [
                TensorInfo.of(t).storage for _, t in harness.tensors_of(fn, args, kwargs)
            ]
        if mode == "count_ops":
            return dict(h.count_ops(fn, args, kwargs, may_modify=may_modify))
        if mode == "count_flops":
            return h.count_flops(fn, args, kwargs, may_modify=may_modify)
        learner, reference = args
        return h.speed_ratio(learner, reference, device=options["device"], may_modify=may_modify, **options.get("speed", {}))

    def call(self, fn: Callable, *args, what: str | None = None, may_modify: tuple[Tensor, ...] = (), backward: Tensor | None = None, **kwargs):
        """fn(*args, **kwargs) under the rules; raises RuleBroken if it called a forbidden
        op or modified an input (other than those in `may_modify`, which come back updated).
        With `backward` (the upstream gradient), the output's backward runs there too, and
        the .grad of every argument that requires grad comes back."""
        return self._run("call", fn, args, kwargs, what=what, may_modify=tuple(may_modify), backward=backward)

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
            name = getattr(exc, "remote_type", type(exc).__name__)
            raise Wrong(f"{what} raised {name}: {exc}; expected {exc_type.__name__}") from exc
        raise Wrong(f"{what} returned {describe(result)}; expected it to raise {exc_type.__name__}")

    def record_ops(self, fn: Callable, *args, may_modify: tuple[Tensor, ...] = (), **kwargs) -> Recording:
        """Every aten op fn(*args, **kwargs) runs (under no_grad and the rules), in order."""
        data, storages = self._run("record_ops", fn, args, kwargs, may_modify=tuple(may_modify))
        ops = Recording(op_from_data(d) for d in data)
        ops.input_storages = tuple(int(s) for s in storages)
        return ops

    def count_ops(self, fn: Callable, *args, may_modify: tuple[Tensor, ...] = (), **kwargs) -> Counter[str]:
        """How many times each aten op that does work runs during fn(*args, **kwargs)
        (views left out, kata.harness.Harness.count_ops)."""
        counts = self._run("count_ops", fn, args, kwargs, may_modify=tuple(may_modify))
        return Counter({str(k): int(v) for k, v in counts.items()})

    def count_flops(self, fn: Callable, *args, may_modify: tuple[Tensor, ...] = (), **kwargs) -> int:
        """Floating-point operations of fn(*args, **kwargs) as torch's FlopCounterMode counts them."""
        return int(self._run("count_flops", fn, args, kwargs, may_modify=tuple(may_modify)))

    def speed_ratio(
        self, learner: Callable[[], object], reference: Callable[[], object], *, device: torch.device,
        near: float | None = None, may_modify: tuple[Tensor, ...] = (), **budget,
    ) -> float:  # fmt: skip
        """learner time / reference time, measured side by side where the learner's code
        runs (kata.harness.Harness.speed_ratio). Build both with functools.partial."""
        speed = {"near": near, **budget}
        return float(self._run("speed", None, (learner, reference), {}, may_modify=tuple(may_modify), speed=speed, device=device))


def op_from_data(d: dict) -> Op:
    def info(x) -> TensorInfo:
        dtype, shape, storage = x
        if not isinstance(dtype, torch.dtype):
            raise TypeError("a malformed op record")
        return TensorInfo(dtype, tuple(int(n) for n in shape), int(storage))

    return Op(str(d["name"]), bool(d["view"]), tuple(info(x) for x in d["in"]), tuple(info(x) for x in d["out"]))


# ---------------------------------------------------------------- learner objects


def is_instance(obj, cls: type) -> bool:
    """isinstance, for objects that may live in the executor (a Remote knows its classes' names)."""
    if isinstance(obj, Remote):
        return f"{cls.__module__}.{cls.__qualname__}" in obj.kata_mro
    return isinstance(obj, cls)


def type_name(obj) -> str:
    return obj.kata_type if isinstance(obj, Remote) else type(obj).__name__


def place(near, *objects) -> list[Remote]:
    """Grader-built objects (a model and its optimizer, say) moved into the executor where
    `near` (a learner Remote) lives, so the learner's code can work on them: Remotes of
    copies that keep their references to each other. Pass together what refers together."""
    ex = find_executor(near)
    if ex is None:
        return list(objects)
    return ex.put(*objects)


def run_in(near, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs), a grader's own module-level function, run in the executor where
    `near` lives (under the rules): a Remote of what it made there (a one-pass loader)."""
    ex = find_executor(near)
    return fn(*args, **kwargs) if ex is None else ex.call(fn, args, kwargs, keep=True)


def seed_executor(near, seed: int) -> None:
    """Reseed torch's global generator where `near` runs, before its next call."""
    ex = find_executor(near)
    if ex is None:
        harness.seed_torch(seed)
    else:
        ex.seed(seed)


def storage_of(t: Tensor) -> dict:
    """Where tensor t lived where it was made: {'storage': address, 'nbytes': size,
    'base': id of the tensor it views, or None}. Storage identity is evidence for work
    checks (a cache returns views of one preallocated storage)."""
    info = getattr(t, "kata_storage", None)
    if info is not None:
        return info
    storage = t.untyped_storage()
    return {"storage": storage.data_ptr(), "nbytes": storage.nbytes(), "base": id(t._base) if t._base is not None else None}


def in_executor(t: Tensor):
    """The executor's own tensor t was copied from (a Remote), to hand back to trusted
    helpers there (kata.harness.storage_bytes); t itself where there is none."""
    return getattr(t, "kata_remote", t)


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
    if a.numel() == 0:
        return 0.0  # an empty result is exactly right once its shape is
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


def expect_equal(actual, expected: Tensor, *, what: str, device=None, hint: str = "") -> None:
    """Exactly `expected`'s values, dtype and shape (and device type, if given): for results
    with nothing to round (integers, selections, views). The message names the first wrong
    element and how many differ, `hint` appended; small tensors are shown whole."""
    expect_tensor(actual, shape=expected.shape, dtype=expected.dtype, device=expected.device if device is None else device, what=what)
    got, want = actual.detach().cpu(), expected.detach().cpu()
    if torch.equal(got, want):
        return
    bad = got != want
    idx = tuple(int(i) for i in bad.nonzero()[0])
    whole = f"\n  got      {got.tolist()}\n  expected {want.tolist()}" if want.numel() <= 64 else ""
    raise Wrong(
        f"{what} gave wrong values: at index {idx} got {got[idx].item()}, expected {want[idx].item()} "
        f"({int(bad.sum())} of {bad.numel()} elements differ){': ' + hint if hint else ''}{whole}"
    )


def largest_new_tensor(ops) -> tuple[int, tuple, str]:
    """(elements, shape, op) of the largest tensor any recorded op made (views and in-place
    results excluded): a memory work check's evidence (Rules.record_ops)."""
    best = (0, (), "")
    for op in ops:
        for t in op.new_tensors():
            n = math.prod(t.shape)
            if n > best[0]:
                best = (n, t.shape, op.name)
    return best


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


def expect_reductions_in_float32(ops: Recording, *, what: str) -> None:
    """Every reduction among `ops` (Rules.record_ops of one call) works in float32 or wider:
    it returns no half-precision tensor, and reads none that the call computed (the call's
    own inputs may be read as they are: mean(x, dtype=torch.float32)).
    In bfloat16 the values alone cannot show this: torch's reductions accumulate in float32
    internally, so x.square().mean() in bfloat16 stays inside bfloat16's tolerance; float16
    shows it only where x^2 overflows."""
    own = set(ops.input_storages)
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


def expect_fast_enough(ratio: float, limit: float, *, what: str, device: torch.device) -> None:
    if ratio > limit:
        raise TooSlow(
            f"{what} took {ratio:.1f}x the reference solution's time on {device.type} (limit {limit:g}x); "
            "look for Python loops, repeated work or needless copies"
        )
