"""Grader for the positional kata: sinusoidal_positions, rope_cos_sin, apply_rope, apply_rope_interleaved.

torch has no positional-encoding op, so every value is checked against the formula computed
in float64; float32 and half-precision results may differ from it by the default tolerance
plus 4x the error that formula makes when computed plainly in float32 (the worst of three
ways of writing the frequencies: base ** (-2i/D), exp(-2i/D * log(base)), p / base ** (2i/D)).
Beyond the values: the rotation keeps every vector's norm, makes q·k depend only on the
distance between positions, gives a decoding step at positions T0.. the rows T0.. of the
whole sequence, works in bfloat16 and float16 at position 8192 (angles computed in half
precision do not), and the two layouts are one permutation of the features apart.
Gradients to x; rules (inputs unmodified) on every call; no Python loop building the table.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("positional")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]
LAYOUTS = ["rotate_half", "interleaved"]


@pytest.fixture(scope="module")
def pos(impl):
    return impl.load("positional")


# ---------------------------------------------------------------- the formulas


def angles(positions, dim: int, base: float, *, dtype=torch.float64, how: str = "pow"):
    """p * base^(-2i/dim), (..., dim/2), computed in `dtype`; `how` picks one way of writing
    it (the float32 ones give the error a plain float32 implementation is bound to make)."""
    p = positions.to(dtype).unsqueeze(-1)
    two_i = torch.arange(0, dim, 2, dtype=dtype, device=positions.device)
    if how == "pow":
        return p * base ** (-two_i / dim)
    if how == "exp":
        return p * torch.exp(two_i * (-math.log(base) / dim))
    return p / base ** (two_i / dim)  # "div"


HOWS = ("pow", "exp", "div")


def worst(candidates, want):
    """The candidate farthest from the golden `want`: the float32 baseline of a tolerance."""
    return max(candidates, key=lambda c: checks.max_error(c, want))


def formula_sinusoidal(n, dim, base=10000.0, *, dtype=torch.float64, how="pow"):
    a = angles(torch.arange(n), dim, base, dtype=dtype, how=how)  # (P, D/2)
    return torch.stack((a.sin(), a.cos()), dim=-1).flatten(-2)  # (P, D): sin, cos, sin, cos...


def formula_cos_sin(positions, dim, base=10000.0, *, dtype=torch.float64, how="pow"):
    a = angles(positions.cpu(), dim, base, dtype=dtype, how=how)
    a = torch.cat((a, a), dim=-1)  # (..., T, D): rotate-half layout
    return a.cos(), a.sin()


def formula_rope(x, cos, sin):
    """x * cos + rotate_half(x) * sin, in the promoted dtype of its arguments."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def formula_interleaved(x, positions, base=10000.0, *, dtype=torch.float64, how="pow"):
    """Pairs (x[2i], x[2i+1]) rotated by p * base^(-2i/D), with real arithmetic, in `dtype`."""
    a = angles(positions.cpu(), x.shape[-1], base, dtype=dtype, how=how)  # (..., T, D/2)
    if a.dim() == 3:
        a = a[:, None]
    c, s = a.cos(), a.sin()
    xw = x.cpu().to(dtype)
    even, odd = xw[..., 0::2], xw[..., 1::2]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)


def f32_rope(x, positions, base=10000.0, *, tables=torch.float32, how="pow"):
    """What a plain implementation computes: float32 angles, tables in `tables`, x's dtype out."""
    cos, sin = (t.to(tables) for t in formula_cos_sin(positions, x.shape[-1], base, dtype=torch.float32, how=how))
    return formula_rope(x.cpu(), cos, sin).to(x.dtype)


# ---------------------------------------------------------------- inputs


def offsets_positions(t: int, starts) -> torch.Tensor:
    """(len(starts), t): row b is starts[b], starts[b] + 1, ... (sequences at different offsets)."""
    return torch.tensor(starts)[:, None] + torch.arange(t)[None, :]


def long_positions(t: int) -> torch.Tensor:
    """(2, t) positions up to 8192: the last t positions before 8192, and t spread over 0..8192."""
    spread = torch.linspace(0, 8192, t).round().to(torch.int64)
    return torch.stack((torch.arange(8192 - t + 1, 8193), spread))


SINUSOIDAL_CASES = {
    "small": ((6, 8), {}),
    "dim_2": ((5, 2), {}),
    "one_position": ((1, 16), {}),
    "odd_number_of_pairs": ((7, 6), {}),
    "long": ((512, 32), {}),
    "base_100": ((50, 12), {"base": 100.0}),
    "float64": ((64, 16), {"dtype": torch.float64}),
}


def rope_positions_case(name: str, device):
    """(positions, head_dim, kwargs) for one named rope_cos_sin case."""
    cases = {
        "arange": (torch.arange(6), 8, {}),
        "decoding_offset": (torch.arange(100, 108), 16, {}),
        "batched": (offsets_positions(5, [0, 37]), 8, {}),
        "unordered_repeated": (torch.tensor([5, 0, 3, 3, 9]), 4, {}),
        "base_500000": (torch.arange(0, 40, 3), 32, {"base": 500000.0}),
        "head_dim_2": (torch.arange(7), 2, {}),
        "float64": (torch.arange(300, 310), 8, {"dtype": torch.float64}),
    }
    p, d, kw = cases[name]
    return p.to(device), d, kw


def x_of(*shape, seed, device, dtype=torch.float32):
    return randn(*shape, seed=seed, device=device, dtype=dtype)


def apply_case(name: str, device):
    """(x, positions) for one named apply_rope / apply_rope_interleaved case."""
    cases = {
        "4d": (x_of(2, 3, 6, 8, seed=1, device=device), torch.arange(6)),
        # B == H: a (B, T, D) table broadcast as (1, B, T, D) lands on the heads, silently.
        "batched_tables": (x_of(2, 2, 5, 8, seed=2, device=device), offsets_positions(5, [3, 40])),
        "batched_tables_one_head": (x_of(3, 1, 4, 16, seed=3, device=device), offsets_positions(4, [0, 9, 70])),
        "single_token": (x_of(2, 4, 1, 8, seed=4, device=device), torch.tensor([37])),
        "non_contiguous": (x_of(2, 6, 3, 8, seed=5, device=device).transpose(1, 2), torch.arange(10, 16)),
        "head_dim_2": (x_of(1, 2, 3, 2, seed=6, device=device), torch.arange(3)),
        "unordered_long_base": (x_of(1, 2, 5, 32, seed=7, device=device), torch.tensor([900, 3, 511, 3, 64])),
    }
    x, p = cases[name]
    return x, p.to(device)


APPLY_CASES = ["4d", "batched_tables", "batched_tables_one_head", "single_token", "non_contiguous", "head_dim_2"]
INTERLEAVED_CASES = ["4d", "batched_tables", "single_token", "non_contiguous", "head_dim_2", "unordered_long_base"]


def call_cos_sin(pos, positions, head_dim, **kwargs):
    what = describe_call("rope_cos_sin", positions, head_dim, **kwargs)
    got = rules.call(pos.rope_cos_sin, positions, head_dim, what=what, **kwargs)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise checks.Wrong(f"{what} returned {checks.describe(got)}; expected a tuple (cos, sin)")
    return got, what


def learner_rope(pos, layout, x, positions, *, backward=None):
    """x rotated by the learner's code: rope_cos_sin then apply_rope, or apply_rope_interleaved."""
    if layout == "interleaved":
        what = describe_call("apply_rope_interleaved", x, positions)
        return rules.call(pos.apply_rope_interleaved, x, positions, what=what, backward=backward), what
    (cos, sin), _ = call_cos_sin(pos, positions, x.shape[-1])
    what = f"apply_rope({checks.describe(x)}, *rope_cos_sin({checks.describe(positions)}, {x.shape[-1]}))"
    return rules.call(pos.apply_rope, x, cos, sin, what=what, backward=backward), what


def f32_layout(layout, x, positions, how):
    return f32_rope(x, positions, how=how) if layout == "rotate_half" else formula_interleaved(x, positions, dtype=torch.float32, how=how)


def with_slack(expected, slack):
    """A baseline for expect_close whose error against `expected` is `slack` exactly: for
    properties (equal in exact arithmetic) whose float32 noise is measured on the formula."""
    return expected + slack


# ---------------------------------------------------------------- sinusoidal_positions


@pytest.mark.parametrize("case", list(SINUSOIDAL_CASES))
def test_sinusoidal_matches_formula(pos, device, case):
    (n, dim), kwargs = SINUSOIDAL_CASES[case]
    dtype = kwargs.get("dtype", torch.float32)
    base = kwargs.get("base", 10000.0)
    what = describe_call("sinusoidal_positions", n, dim, device=device.type, **kwargs)
    got = rules.call(pos.sinusoidal_positions, n, dim, device=device, what=what, **kwargs)
    want = formula_sinusoidal(n, dim, base)
    # float32 angles are within the contract even for a float64 table: the baseline is float32's error.
    baseline = worst([formula_sinusoidal(n, dim, base, dtype=torch.float32, how=h).to(dtype) for h in HOWS], want)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_sinusoidal_low_precision(pos, device, dtype):
    """8192 positions: bfloat16 holds integers exactly only to 256 (float16 to 2048), so
    angles computed in the table's dtype are off by whole radians there."""
    checks.need_dtype(dtype, device)
    n, dim = 8192, 16
    what = describe_call("sinusoidal_positions", n, dim, device=device.type, dtype=dtype)
    got = rules.call(pos.sinusoidal_positions, n, dim, device=device, dtype=dtype, what=what)
    want = formula_sinusoidal(n, dim)
    baseline = worst([formula_sinusoidal(n, dim, dtype=torch.float32, how=h).to(dtype) for h in HOWS], want)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("where", ["device", "meta"])
def test_sinusoidal_on_requested_device(pos, device, where):
    """The table is made where it is asked for; 'meta' lets a CPU-only run check device= is honoured."""
    target = device if where == "device" else torch.device("meta")
    what = f"sinusoidal_positions(4, 8, device={target.type!r})"
    got = rules.call(pos.sinusoidal_positions, 4, 8, device=target, what=what)
    checks.expect_tensor(got, shape=(4, 8), dtype=torch.float32, device=target, what=what)


def test_sinusoidal_rejects_odd_dim(pos):
    rules.expect_raises(ValueError, pos.sinusoidal_positions, 4, 7, what="sinusoidal_positions(4, 7)")


def sinusoidal_ops(pos, n, dim, device):
    return rules.count_ops(pos.sinusoidal_positions, n, dim, device=device)


def test_sinusoidal_no_loop_over_positions(pos, device):
    """The same aten ops for a (4, 8) table as for a (12, 16) one: no loop over rows or columns."""
    checks.expect_same_op_count(
        partial(sinusoidal_ops, pos, 4, 8, device), partial(sinusoidal_ops, pos, 12, 16, device),
        what="sinusoidal_positions", small_desc="(4, 8)", large_desc="(12, 16)",
    )  # fmt: skip


# ---------------------------------------------------------------- rope_cos_sin


ROPE_CASES = ["arange", "decoding_offset", "batched", "unordered_repeated", "base_500000", "head_dim_2", "float64"]


def expect_cos_sin(got, positions, head_dim, kwargs, *, what, device, dtype):
    base = kwargs.get("base", 10000.0)
    want = formula_cos_sin(positions, head_dim, base)
    candidates = [formula_cos_sin(positions, head_dim, base, dtype=torch.float32, how=h) for h in HOWS]
    for i, name in enumerate(("cos", "sin")):
        baseline = worst([c[i].to(dtype) for c in candidates], want[i])
        expect_close(got[i], want[i], what=f"{name} of {what}", dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_cos_sin_matches_formula(pos, device, case):
    positions, head_dim, kwargs = rope_positions_case(case, device)
    got, what = call_cos_sin(pos, positions, head_dim, **kwargs)
    expect_cos_sin(got, positions, head_dim, kwargs, what=what, device=device, dtype=kwargs.get("dtype", torch.float32))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_rope_cos_sin_low_precision(pos, device, dtype):
    """Tables in half precision for positions up to 8192: the angles must be float32."""
    checks.need_dtype(dtype, device)
    positions = long_positions(64).to(device)
    got, what = call_cos_sin(pos, positions, 32, dtype=dtype)
    expect_cos_sin(got, positions, 32, {}, what=what, device=device, dtype=dtype)


@pytest.mark.parametrize("where", ["device", "meta"])
def test_rope_cos_sin_on_positions_device(pos, device, where):
    """cos and sin are made on the positions' device (the frequencies too)."""
    target = device if where == "device" else torch.device("meta")
    positions = torch.arange(5, device=target)
    got, what = call_cos_sin(pos, positions, 8)
    for name, t in zip(("cos", "sin"), got):
        checks.expect_tensor(t, shape=(5, 8), dtype=torch.float32, device=target, what=f"{name} of {what}")


def test_rope_cos_sin_rejects_odd_head_dim(pos, device):
    positions = torch.arange(4, device=device)
    rules.expect_raises(ValueError, pos.rope_cos_sin, positions, 5, what="rope_cos_sin(int64 (4,), 5)")


# ---------------------------------------------------------------- apply_rope


def tables_for(positions, head_dim, dtype=torch.float32):
    """Exact cos and sin rounded once to dtype: the inputs apply_rope is checked on."""
    return tuple(t.to(device=positions.device, dtype=dtype) for t in formula_cos_sin(positions, head_dim))


@pytest.mark.parametrize("case", APPLY_CASES)
def test_apply_rope_matches_formula(pos, device, case):
    x, positions = apply_case(case, device)
    cos, sin = tables_for(positions, x.shape[-1])
    what = describe_call("apply_rope", x, cos, sin)
    got = rules.call(pos.apply_rope, x, cos, sin, what=what)
    want = formula_rope(golden(x), golden(cos), golden(sin))
    expect_close(got, want, what=what, dtype=x.dtype, device=device, baseline=formula_rope(x, cos, sin))


def test_apply_rope_gradients(pos, device):
    """The gradient of x through the rotation (RoPE sits between the projections and the scores)."""
    x, positions = apply_case("batched_tables", device)
    cos, sin = tables_for(positions, x.shape[-1])
    x = x.clone().requires_grad_()
    what = describe_call("apply_rope", x, cos, sin)
    upstream = randn(*x.shape, seed=9, device=device)
    out = rules.call(pos.apply_rope, x, cos, sin, what=what, backward=upstream)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    if x.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches x; is the rotation computed under no_grad or detached?")
    gx = golden(x).requires_grad_()
    (want,) = torch.autograd.grad(formula_rope(gx, golden(cos), golden(sin)), gx, golden(upstream))
    bx = x.detach().clone().requires_grad_()
    (base,) = torch.autograd.grad(formula_rope(bx, cos, sin), bx, upstream)
    expect_close(x.grad, want, what=f"the gradient of x through {what}", dtype=torch.float32, device=device, baseline=base)


@pytest.mark.parametrize("tables", ["float32", "x_dtype"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_rope_low_precision(pos, device, dtype, tables):
    """Half-precision x at positions up to 8192, with the learner's rope_cos_sin tables in
    float32 or in x's dtype: the output is in x's dtype and as accurate as float32 angles allow."""
    checks.need_dtype(dtype, device)
    positions = long_positions(64).to(device)
    x = x_of(2, 2, 64, 32, seed=11, device=device, dtype=dtype)
    table_dtype = torch.float32 if tables == "float32" else dtype
    (cos, sin), _ = call_cos_sin(pos, positions, 32, dtype=table_dtype)
    what = f"apply_rope({checks.describe(x)}, *rope_cos_sin({checks.describe(positions)}, 32, dtype={table_dtype}))"
    got = rules.call(pos.apply_rope, x, cos, sin, what=what)
    want = formula_rope(golden(x), *formula_cos_sin(positions, 32))
    baseline = worst([f32_rope(x, positions, tables=table_dtype, how=h) for h in HOWS], want)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


# ---------------------------------------------------------------- properties of the rotation


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_preserves_norms(pos, device, layout):
    """A rotation keeps the length of every (b, h, t) vector: each pair must turn by one angle."""
    x = x_of(2, 3, 6, 16, seed=12, device=device)
    positions = offsets_positions(6, [5, 200]).to(device)
    got, what = learner_rope(pos, layout, x, positions)
    checks.expect_tensor(got, shape=x.shape, dtype=x.dtype, device=device, what=what)
    want = golden(x).norm(dim=-1)
    baseline = worst([f32_layout(layout, x, positions, h).double().norm(dim=-1).float() for h in HOWS], want)
    expect_close(golden(got).norm(dim=-1).float(), want, what=f"the norms over D of {what}", dtype=torch.float32,
                 device=device, baseline=baseline)  # fmt: skip


def scores(q, k):
    return golden(q) @ golden(k).transpose(-1, -2)  # (B, H, T, T), float64


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_scores_depend_only_on_relative_position(pos, device, layout):
    """Shifting every position of q and k by the same amount (37 for one sequence, 300 for
    the other) leaves every score q_m·k_n unchanged: it depends on m - n alone."""
    q, k = x_of(2, 2, 6, 16, seed=13, device=device), x_of(2, 2, 6, 16, seed=14, device=device)
    plain = torch.arange(6).expand(2, 6).to(device)
    shifted = offsets_positions(6, [37, 300]).to(device)
    (q0, _), (k0, _) = learner_rope(pos, layout, q, plain), learner_rope(pos, layout, k, plain)
    (q1, what), (k1, _) = learner_rope(pos, layout, q, shifted), learner_rope(pos, layout, k, shifted)
    for t, w in ((q0, "q"), (k0, "k"), (q1, "q"), (k1, "k")):
        checks.expect_tensor(t, shape=q.shape, dtype=q.dtype, device=device, what=f"rotating {w}")
    expected = scores(q0, k0)
    # The float32 noise of the property: the formula's own scores, shifted against unshifted.
    slack = worst([scores(f32_layout(layout, q, shifted, h), f32_layout(layout, k, shifted, h))
                   - scores(f32_layout(layout, q, plain, h), f32_layout(layout, k, plain, h)) for h in HOWS],
                  torch.zeros_like(expected))  # fmt: skip
    expect_close(scores(q1, k1).float(), expected, device=device, dtype=torch.float32,
                 what=f"q·k after rotating both with positions shifted by 37 and 300 ({what}), against unshifted",
                 baseline=with_slack(expected, slack))  # fmt: skip


@pytest.mark.parametrize("new", [1, 4], ids=["one_token", "four_tokens"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_decoding_offset(pos, device, layout, new):
    """Decoding with a cache rotates only the new tokens, at positions T0 .. T0 + t - 1: that
    must equal the last t rows of rotating the whole sequence at positions 0 .. T0 + t - 1."""
    total = 9
    x = x_of(2, 3, total, 8, seed=15, device=device)
    full, _ = learner_rope(pos, layout, x, torch.arange(total, device=device))
    step, what = learner_rope(pos, layout, x[:, :, total - new :], torch.arange(total - new, total, device=device))
    checks.expect_tensor(full, shape=x.shape, dtype=x.dtype, device=device, what="rotating the whole sequence")
    expect_close(step, golden(full[:, :, total - new :]), what=f"{what}, against rows {total - new}.. of the whole sequence",
                 dtype=x.dtype, device=device)  # fmt: skip


# ---------------------------------------------------------------- apply_rope_interleaved


@pytest.mark.parametrize("case", INTERLEAVED_CASES)
def test_interleaved_matches_formula(pos, device, case):
    x, positions = apply_case(case, device)
    base = 500000.0 if case == "unordered_long_base" else 10000.0
    kwargs = {"base": base} if base != 10000.0 else {}
    what = describe_call("apply_rope_interleaved", x, positions, **kwargs)
    got = rules.call(pos.apply_rope_interleaved, x, positions, what=what, **kwargs)
    want = formula_interleaved(x, positions, base)
    baseline = worst([formula_interleaved(x, positions, base, dtype=torch.float32, how=h) for h in HOWS], want)
    expect_close(got, want, what=what, dtype=x.dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_interleaved_low_precision(pos, device, dtype):
    """Half-precision x at positions up to 8192: float32 angles, the output in x's dtype."""
    checks.need_dtype(dtype, device)
    positions = long_positions(64).to(device)
    x = x_of(2, 2, 64, 32, seed=16, device=device, dtype=dtype)
    what = describe_call("apply_rope_interleaved", x, positions)
    got = rules.call(pos.apply_rope_interleaved, x, positions, what=what)
    want = formula_interleaved(x, positions)
    baseline = worst([formula_interleaved(x, positions, dtype=torch.float32, how=h).to(dtype) for h in HOWS], want)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("fn", ["apply_rope", "apply_rope_interleaved"])
def test_half_precision_x_keeps_its_dtype(pos, device, fn, dtype):
    """A half-precision x comes back in its dtype, whatever the tables' dtype (float32 here)
    and whatever precision the rotation is computed in. Positions 0..3 only: this check is
    about the dtype, the low-precision checks about the values."""
    checks.need_dtype(dtype, device)
    x = x_of(1, 2, 4, 8, seed=18, device=device, dtype=dtype)
    positions = torch.arange(4, device=device)
    if fn == "apply_rope":
        cos, sin = tables_for(positions, 8)
        what = describe_call(fn, x, cos, sin)
        got = rules.call(pos.apply_rope, x, cos, sin, what=what)
    else:
        what = describe_call(fn, x, positions)
        got = rules.call(pos.apply_rope_interleaved, x, positions, what=what)
    checks.expect_tensor(got, shape=x.shape, dtype=dtype, device=device, what=what)


def test_interleaved_gradients(pos, device):
    x, positions = apply_case("batched_tables", device)
    x = x.clone().requires_grad_()
    what = describe_call("apply_rope_interleaved", x, positions)
    upstream = randn(*x.shape, seed=9, device=device)
    out = rules.call(pos.apply_rope_interleaved, x, positions, what=what, backward=upstream)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    if x.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches x; is something detached?")
    gx = golden(x).requires_grad_()
    (want,) = torch.autograd.grad(formula_interleaved(gx, positions), gx, golden(upstream))
    bx = x.detach().cpu().clone().requires_grad_()
    (base,) = torch.autograd.grad(formula_interleaved(bx, positions, dtype=torch.float32), bx, upstream.cpu())
    expect_close(x.grad, want, what=f"the gradient of x through {what}", dtype=torch.float32, device=device, baseline=base)


def test_layouts_related_by_permutation(pos, device):
    """Moving the even features first and the odd ones after (x[..., perm]) turns the
    interleaved layout into the rotate-half one: apply_rope_interleaved(x, p) must equal
    apply_rope(x[..., perm], *rope_cos_sin(p, D))[..., inverse of perm]."""
    D = 16
    x = x_of(2, 3, 7, D, seed=17, device=device)
    positions = offsets_positions(7, [0, 123]).to(device)
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2))).to(device)
    inverse = torch.argsort(perm)
    interleaved, what = learner_rope(pos, "interleaved", x, positions)
    half, _ = learner_rope(pos, "rotate_half", x[..., perm].contiguous(), positions)
    checks.expect_tensor(half, shape=x.shape, dtype=x.dtype, device=device, what="apply_rope(x[..., perm], ...)")
    expected = golden(half[..., inverse])
    slack = worst([formula_interleaved(x, positions, dtype=torch.float32, how=h).double()
                   - f32_rope(x[..., perm], positions, how=h)[..., inverse.cpu()].double() for h in HOWS],
                  torch.zeros_like(expected))  # fmt: skip
    expect_close(interleaved, expected, what=f"{what}, against apply_rope on the features reordered (evens, then odds)",
                 dtype=x.dtype, device=device, baseline=with_slack(expected, slack))  # fmt: skip
