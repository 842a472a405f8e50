"""Grader for the quantization kata: quantize_per_channel, dequantize_per_channel,
int8_linear, quantize_int4_grouped, dequantize_int4_grouped.

int8 values are compared exactly with torch.quantize_per_channel(..., torch.qint8)'s
int_repr(), scales with the float64 formula; lower bit widths and the int4 format, which
torch has no op for, with the formula the docstrings give, computed here in float32
exactly as prescribed (so equality can be asked). Error bounds |w - dequantized| <= scale/2
are checked on the learner's own quantization, the packed int4 byte layout bit for bit,
round trips of values already on the grid for losslessness, and int8_linear against the
float layer it replaces. A data-flow check follows every value computed from the scales
through the aten ops int8_linear runs: none may be as large as the weight.
"""

from __future__ import annotations

import warnings
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course
from kata.checks import describe_call, expect_close, expect_tensor, golden, randn

TOPIC = course.get("quantization")
rules = checks.Rules(TOPIC.forbidden)


@pytest.fixture(scope="module")
def qz(impl):
    return impl.load("quantization")


# ---------------------------------------------------------------- inputs


def weights(*shape: int, seed: int, device, dtype=torch.float32, axis: int = 0) -> torch.Tensor:
    """Seeded weights whose channels along `axis` differ in magnitude by up to 10^4, so that
    one scale for the whole tensor (or along the wrong axis) is far off."""
    w = randn(*shape, seed=seed, device="cpu", dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    magnitude = 10 ** (torch.rand(shape[axis], generator=g, dtype=torch.float64) * 4 - 2)
    view = [1] * len(shape)
    view[axis] = -1
    return (w * magnitude.view(view)).to(device=device, dtype=dtype)


# name: (shape, axis)
INT8_CASES = {
    "2d axis=0": ((24, 40), 0),
    "2d axis=1": ((24, 40), 1),
    "3d conv weight axis=0": ((16, 8, 3), 0),
    "3d axis=-1": ((6, 5, 12), -1),
    "1d": ((20,), 0),
    "square axis=0": ((32, 32), 0),
}


def int8_case(name, device, dtype=torch.float32):
    shape, axis = INT8_CASES[name]
    return weights(*shape, seed=1, device=device, dtype=dtype, axis=axis % len(shape)), axis


# ---------------------------------------------------------------- references


def formula_scale(w, bits, axis):
    """scale[c] = max |w| over channel c / qmax (1.0 for a zero channel), in float64."""
    wf = golden(w)
    axis = axis % wf.dim()
    others = [d for d in range(wf.dim()) if d != axis]
    amax = wf.abs().amax(dim=others) if others else wf.abs()
    qmax = 2 ** (bits - 1) - 1
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def channel_view(t, dim, axis):
    shape = [1] * dim
    shape[axis % dim] = -1
    return t.view(shape)


def formula_q(w, bits, axis):
    """clamp(round(w / scale), -qmax, qmax) as the docstring prescribes: float32 division, half to even."""
    wf = w.detach().to("cpu", torch.float32)
    scale = formula_scale(w, bits, axis).to(torch.float32)
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(wf / channel_view(scale, wf.dim(), axis)), -qmax, qmax).to(torch.int8), scale


def torch_int8(w, axis):
    """torch's own symmetric int8 per-channel quantization with the formula's scales."""
    wf = w.detach().to("cpu", torch.float32)
    _, scale = formula_q(w, 8, axis)
    zeros = torch.zeros(scale.numel(), dtype=torch.long)
    with warnings.catch_warnings():  # torch deprecates its quantized tensors; the values stand
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(wf, scale.double(), zeros, axis % wf.dim(), torch.qint8).int_repr()


def formula_int4(w, group_size):
    """(packed uint8 (out, in/2), scales float32 (out, in/group_size), q int8 (out, in)) by the docstring."""
    wf = w.detach().to("cpu", torch.float32)
    n_out, n_in = wf.shape
    groups = wf.reshape(n_out, n_in // group_size, group_size)
    amax = golden(w).abs().reshape(n_out, n_in // group_size, group_size).amax(-1)
    scales = torch.where(amax > 0, amax / 7, torch.ones_like(amax))  # float64
    s32 = scales.to(torch.float32)
    q = torch.clamp(torch.round(groups / s32[..., None]), -7, 7).reshape(n_out, n_in).to(torch.int8)
    nib = (q.to(torch.int16) + 8).to(torch.uint8)
    return nib[:, 0::2] | (nib[:, 1::2] << 4), scales, q


# ---------------------------------------------------------------- helpers


def call_quantize(qz, w, **kwargs):
    what = describe_call("quantize_per_channel", w, **kwargs)
    result = rules.call(qz.quantize_per_channel, w, what=what, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise checks.Wrong(f"{what} returned {checks.describe(result)}; expected a tuple (q, scale)")
    q, scale = result
    axis = kwargs.get("axis", 0) % w.dim()
    expect_tensor(q, shape=w.shape, dtype=torch.int8, device=w.device, what=f"{what}: q")
    expect_tensor(scale, shape=(w.shape[axis],), dtype=torch.float32, device=w.device, what=f"{what}: scale")
    return q, scale, what


def expect_equal_ints(got, want, *, what):
    got = got.cpu()
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        idx = tuple(bad[0].tolist())
        raise checks.Wrong(
            f"{what}: {bad.shape[0]} of {want.numel()} values differ; first at index {idx}: got {got[idx].item()}, "
            f"expected {want[idx].item()}"
        )


def expect_q(got, w, bits, axis, *, what):
    """q as the formula gives it, except that where w / scale lies within float32 rounding
    of a half-way point (bfloat16 weights land there often), either neighbour is accepted:
    w / scale and w * (1 / scale) round those differently."""
    want, scale = formula_q(w, bits, axis)
    ratio = golden(w).cpu() / channel_view(scale.double(), w.dim(), axis)
    near_tie = ((ratio - ratio.floor()) - 0.5).abs() < 1e-5 * ratio.abs().clamp_min(1.0)
    qmax = 2 ** (bits - 1) - 1
    other = torch.clamp(torch.where(ratio.floor() == want.double(), ratio.ceil(), ratio.floor()), -qmax, qmax).to(torch.int8)
    got_cpu = got.cpu()
    accepted = torch.where(near_tie & (got_cpu == other), other, want)
    expect_equal_ints(got_cpu, accepted, what=what)


def call_int4(qz, w, **kwargs):
    what = describe_call("quantize_int4_grouped", w, **kwargs)
    result = rules.call(qz.quantize_int4_grouped, w, what=what, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise checks.Wrong(f"{what} returned {checks.describe(result)}; expected a tuple (packed, scales)")
    packed, scales = result
    n_out, n_in = w.shape
    group = kwargs.get("group_size", 32)
    expect_tensor(packed, shape=(n_out, n_in // 2), dtype=torch.uint8, device=w.device, what=f"{what}: packed")
    expect_tensor(scales, shape=(n_out, n_in // group), dtype=torch.float32, device=w.device, what=f"{what}: scales")
    return packed, scales, what


# ---------------------------------------------------------------- quantize_per_channel


@pytest.mark.parametrize("case", list(INT8_CASES))
def test_int8_matches_torch(qz, device, case):
    """q equals torch.quantize_per_channel(w, scale, 0, axis, torch.qint8).int_repr()."""
    w, axis = int8_case(case, device)
    q, _, what = call_quantize(qz, w, axis=axis)
    expect_equal_ints(q, torch_int8(w, axis), what=f"{what}: q against torch's qint8 quantization")


@pytest.mark.parametrize("case", list(INT8_CASES))
def test_scale_matches_formula(qz, device, case):
    """scale[c] = max |w| over channel c / 127."""
    w, axis = int8_case(case, device)
    _, scale, what = call_quantize(qz, w, axis=axis)
    want = formula_scale(w, 8, axis)
    expect_close(scale, want, what=f"{what}: scale", dtype=torch.float32, device=device)


@pytest.mark.parametrize("bits", [2, 4, 7])
def test_lower_bits(qz, device, bits):
    """qmax = 2^(bits-1) - 1: q in [-qmax, qmax], scale = max|w| / qmax."""
    w = weights(12, 32, seed=3, device=device)
    q, scale, what = call_quantize(qz, w, bits=bits)
    expect_close(scale, formula_scale(w, bits, 0), what=f"{what}: scale", dtype=torch.float32, device=device)
    expect_q(q, w, bits, 0, what=f"{what}: q")


def test_round_half_to_even(qz, device):
    """Channels whose max is exactly qmax (scale 1): w / scale lands exactly on halves, and
    torch.round sends them to the even neighbour (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2)."""
    halves = [0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5]
    w = torch.tensor([[127.0, *halves], [-127.0, *halves[::-1]]], device=device)
    q, scale, what = call_quantize(qz, w)
    expect_equal_ints(q, formula_q(w, 8, 0)[0], what=f"{what} on values at exact halves (scale 1)")
    w4 = torch.tensor([[7.0, *halves]], device=device)
    q4, _, what4 = call_quantize(qz, w4, bits=4)
    expect_equal_ints(q4, formula_q(w4, 4, 0)[0], what=f"{what4} on values at exact halves (scale 1)")


def test_zero_channel_gets_scale_one(qz, device):
    """An all-zero channel gets scale 1.0 and q = 0 (no 0 / 0 = nan)."""
    w = weights(6, 16, seed=5, device=device)
    w[2] = 0.0
    q, scale, what = call_quantize(qz, w)
    if scale[2].item() != 1.0:
        raise checks.Wrong(f"{what}: channel 2 is all zeros; its scale is {scale[2].item()!r}, expected 1.0")
    expect_equal_ints(q, torch_int8(w, 0), what=f"{what} with an all-zero channel 2: q")


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_rejects_bad_bits(qz, device, bits):
    w = weights(4, 8, seed=6, device=device)
    rules.expect_raises(ValueError, qz.quantize_per_channel, w, bits=bits, what=f"quantize_per_channel(w, bits={bits})")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_weights(qz, device, dtype):
    """bfloat16 and float16 weights are converted to float32 first: scale stays float32."""
    checks.need_dtype(dtype, device)
    w = weights(24, 40, seed=7, device=device, dtype=dtype)
    q, scale, what = call_quantize(qz, w)
    expect_close(scale, formula_scale(w, 8, 0), what=f"{what}: scale", dtype=torch.float32, device=device)
    expect_q(q, w, 8, 0, what=f"{what}: q")


@pytest.mark.parametrize("bits", [8, 4])
def test_error_bound(qz, device, bits):
    """|w - q * scale| <= scale / 2 at every element, for the learner's own q and scale."""
    w = weights(24, 40, seed=8, device=device, axis=1)
    q, scale, what = call_quantize(qz, w, bits=bits, axis=1)
    s = golden(scale).view(1, -1)
    err = (golden(w) - golden(q.to(torch.float64)) * s).abs()
    bound = s / 2 * (1 + 1e-6)
    if (err > bound).any():
        i, j = (err > bound).nonzero()[0].tolist()
        raise checks.Wrong(
            f"{what}: |w - q * scale| = {err[i, j].item():.4g} at {(i, j)}, more than scale / 2 = {s[0, j].item() / 2:.4g}: "
            "round to the nearest level (not truncate), with scale = max|w| / qmax"
        )


@pytest.mark.parametrize("case", ["2d axis=0", "2d axis=1", "3d conv weight axis=0", "square axis=0"])
def test_dequantize_matches(qz, device, case):
    """dequantize_per_channel(torch's q, scale) = q * scale along axis, float32."""
    w, axis = int8_case(case, device)
    q, scale = torch_int8(w, axis).to(device), formula_q(w, 8, axis)[1].to(device)
    what = describe_call("dequantize_per_channel", q, scale, axis=axis)
    got = rules.call(qz.dequantize_per_channel, q, scale, axis=axis, what=what)
    want = golden(q.to(torch.float64)) * channel_view(golden(scale), q.dim(), axis)
    expect_close(got, want, what=what, dtype=torch.float32, device=device)


# ---------------------------------------------------------------- int8_linear


def linear_inputs(device, *, bias: bool, batch=(2, 5), unit_scales=False):
    """x (*batch, 40), torch's int8 q (24, 40) with its scales (or scales of 1), the float
    weight and a bias."""
    w = weights(24, 40, seed=9, device=device)
    x = randn(*batch, 40, seed=10, device=device)
    q, scale = torch_int8(w, 0).to(device), formula_q(w, 8, 0)[1].to(device)
    if unit_scales:
        scale = torch.ones_like(scale)
    b = randn(24, seed=11, device=device) if bias else None
    return x, q, scale, b, w


def call_linear(qz, x, q, scale, b):
    what = describe_call("int8_linear", x, q, scale, b)
    return rules.call(qz.int8_linear, x, q, scale, b, what=what), what


@pytest.mark.parametrize("bias, unit_scales", [(True, False), (False, False), (True, True)], ids=["bias", "no_bias", "bias, scales of 1"])
def test_int8_linear_matches_dequantized_layer(qz, device, bias, unit_scales):
    """int8_linear(x, q, scale, b) = x @ (q * scale[:, None]).T + b, against float64.
    With scales of 1, where it makes no difference whether the bias is scaled, a bias
    that is missing still shows."""
    x, q, scale, b, _ = linear_inputs(device, bias=bias, unit_scales=unit_scales)
    got, what = call_linear(qz, x, q, scale, b)
    deq = q.to(torch.float32) * scale[:, None]
    want = F.linear(golden(x), golden(deq), golden(b) if b is not None else None)
    baseline = F.linear(x, deq, b)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


def test_int8_linear_within_quantization_bound(qz, device):
    """The learner's quantize then int8_linear against the float layer: |y - (x @ w.T + b)|
    <= sum_i |x_i| * scale_o / 2, the bound the scales imply (plus float32 rounding)."""
    x, _, _, b, w = linear_inputs(device, bias=True)
    q, scale, _ = call_quantize(qz, w)
    got, what = call_linear(qz, x, q, scale, b)
    expect_tensor(got, shape=(2, 5, 24), dtype=torch.float32, device=device, what=what)
    exact = F.linear(golden(x), golden(w), golden(b))
    bound = golden(x).abs().sum(-1, keepdim=True) * golden(scale) / 2  # (2, 5, 24)
    slack = 1e-4 * (golden(x).abs() @ golden(w).abs().T + golden(b).abs())  # float32 rounding
    err = (golden(got) - exact).abs()
    if (err > bound + slack).any():
        idx = tuple((err > bound + slack).nonzero()[0].tolist())
        raise checks.Wrong(
            f"{what} after quantize_per_channel(w): |y - (x @ w.T + b)| = {err[idx].item():.4g} at {idx}, more than "
            f"sum |x| * scale / 2 = {bound[idx].item():.4g}: each output column o must be scaled by scale[o]"
        )


def scale_derived_sizes(ops, scale_storage: int) -> list[tuple[int, tuple, str]]:
    """(elements, shape, op) of every tensor computed, directly or not, from the tensor
    whose storage is `scale_storage` (data flow through storages: views share them)."""
    tainted = {scale_storage}
    found = []
    for op in ops:
        if any(t.storage in tainted for t in op.inputs):
            for t in op.outputs:
                tainted.add(t.storage)
                if t.dtype.is_floating_point:
                    found.append((int(torch.Size(t.shape).numel()), t.shape, op.name))
    return found


def test_int8_linear_never_dequantizes_weight(qz, device):
    """No tensor of the weight's size (24 x 40 = 960 elements) is computed from scale: the
    scales multiply the (3, 24) output of x @ q.T, never q. Casting q itself is allowed."""
    x, q, scale, b, _ = linear_inputs(device, bias=True, batch=(3,))
    ops = rules.record_ops(qz.int8_linear, x, q, scale, b)
    weight_size = q.numel()
    derived = scale_derived_sizes(ops, ops.input_storages[2])  # arguments: x, q, scale, bias
    big = [d for d in derived if d[0] >= weight_size]
    if not derived:
        raise checks.Wrong("int8_linear(x, q, scale, b) never used scale")
    if big:
        n, shape, op = big[0]
        raise checks.Wrong(
            f"int8_linear(float32 (3, 40), int8 (24, 40), float32 (24,), float32 (24,)) computed a {tuple(shape)} tensor "
            f"({n} elements) from scale with {op}: that is a dequantized weight. Multiply x @ q.T by scale instead"
        )


# ---------------------------------------------------------------- int4 grouped

# name: (out, in, group_size, seed)
INT4_CASES = {
    "group_size=32": (24, 64, 32, 12),
    "group_size=8": (5, 48, 8, 13),
    "group_size=2": (3, 16, 2, 14),
    "one group per row": (4, 16, 16, 18),
}
# dequantize only: one byte per row (in = 2), where putting every low nibble before every
# high one happens to be right, and only their order within the byte is tested.
DEQUANT_CASES = [*INT4_CASES, "one byte per row"]


def int4_weights(name, device):
    n_out, n_in, group, seed = INT4_CASES[name] if name in INT4_CASES else (4, 2, 2, 19)
    w = weights(n_out, n_in, seed=seed, device=device, axis=1)  # magnitudes vary along in: per group
    w[0, :group] = 0.0  # one all-zero group: scale 1.0
    return w, group


@pytest.mark.parametrize("case", list(INT4_CASES))
def test_int4_packed_layout(qz, device, case):
    """packed[o, j] = (q[o, 2j] + 8) | (q[o, 2j + 1] + 8) << 4, bit for bit."""
    w, group = int4_weights(case, device)
    packed, _, what = call_int4(qz, w, group_size=group)
    want, _, _ = formula_int4(w, group)
    expect_equal_ints(packed, want, what=f"{what}: packed bytes (low nibble: even column, high: odd; each q + 8)")


@pytest.mark.parametrize("case", list(INT4_CASES))
def test_int4_scales_match_formula(qz, device, case):
    """scales[o, g] = max |w| over the group / 7; an all-zero group gets 1.0."""
    w, group = int4_weights(case, device)
    _, scales, what = call_int4(qz, w, group_size=group)
    _, want, _ = formula_int4(w, group)
    expect_close(scales, want, what=f"{what}: scales", dtype=torch.float32, device=device)


@pytest.mark.parametrize("case", DEQUANT_CASES)
def test_int4_dequantize_matches(qz, device, case):
    """dequantize_int4_grouped(the formula's packed, scales) = (nibble - 8) * scale, float32."""
    w, group = int4_weights(case, device)
    packed, scales, q = formula_int4(w, group)
    packed, scales32 = packed.to(device), scales.to(torch.float32).to(device)
    what = describe_call("dequantize_int4_grouped", packed, scales32, group_size=group)
    got = rules.call(qz.dequantize_int4_grouped, packed, scales32, group_size=group, what=what)
    want = golden(q.to(torch.float64)) * golden(scales32).repeat_interleave(group, dim=1)
    expect_close(got, want, what=what, dtype=torch.float32, device=device)


def test_int4_round_trip_is_lossless(qz, device):
    """Weights already on the int4 grid (q * s, with +-7 in every group) come back from
    quantize then dequantize unchanged, and pack to exactly their q."""
    g = torch.Generator().manual_seed(15)
    q = torch.randint(-7, 8, (8, 64), generator=g)
    q[:, ::16] = 7 * (torch.randint(0, 2, (8, 4), generator=g) * 2 - 1)  # a +-7 in each group of 16
    s = torch.rand(8, 4, generator=g) + 0.1
    w = (q.float() * s.repeat_interleave(16, dim=1)).to(device)
    packed, scales, what = call_int4(qz, w, group_size=16)
    nib = (q + 8).to(torch.uint8)
    expect_equal_ints(packed, nib[:, 0::2] | (nib[:, 1::2] << 4), what=f"{what} on weights already on the grid: packed")
    what2 = "dequantize_int4_grouped(quantize_int4_grouped(w, group_size=16)) on weights already on the grid"
    back = rules.call(qz.dequantize_int4_grouped, packed, scales, group_size=16, what=what2)
    expect_close(back, golden(w), what=what2, dtype=torch.float32, device=device)


def test_int4_error_bound(qz, device):
    """|w - (q - 0) * scale| <= scale / 2 for the learner's packed values and scales."""
    w, group = int4_weights("group_size=32", device)
    packed, scales, what = call_int4(qz, w, group_size=group)
    p = packed.cpu().to(torch.int16)
    q = torch.stack([(p & 0xF) - 8, (p >> 4) - 8], dim=-1).reshape(w.shape)
    s = golden(scales).repeat_interleave(group, dim=1)
    err = (golden(w) - q.to(torch.float64) * s).abs()
    if (err > s / 2 * (1 + 1e-6)).any():
        i, j = (err > s / 2 * (1 + 1e-6)).nonzero()[0].tolist()
        raise checks.Wrong(
            f"{what}: |w - q * scale| = {err[i, j].item():.4g} at {(i, j)}, more than scale / 2 = {s[i, j].item() / 2:.4g} "
            "(q read from the packed nibbles minus 8)"
        )


@pytest.mark.parametrize("shape, group", [((4, 60), 32), ((4, 9), 9), ((4, 8), 3)], ids=["in=60 group=32", "in=9 odd", "in=8 group=3"])
def test_int4_rejects_bad_shapes(qz, device, shape, group):
    w = weights(*shape, seed=16, device=device)
    rules.expect_raises(ValueError, qz.quantize_int4_grouped, w, group_size=group, what=describe_call("quantize_int4_grouped", w, group_size=group))


# ---------------------------------------------------------------- work


def op_counts(qz, rows, device) -> Counter:
    w = weights(rows, 64, seed=17, device=device)
    counts = rules.count_ops(qz.quantize_per_channel, w)
    counts.update(rules.count_ops(qz.quantize_per_channel, w, axis=1))
    counts.update(rules.count_ops(qz.quantize_int4_grouped, w, group_size=16))
    packed, scales, _ = formula_int4(w, 16)
    counts.update(rules.count_ops(qz.dequantize_int4_grouped, packed.to(device), scales.float().to(device), group_size=16))
    return counts


def test_no_loop_over_channels(qz, device):
    """quantize_per_channel (both axes), quantize_int4_grouped and dequantize_int4_grouped run
    the same aten ops for 4 rows as for 12."""
    checks.expect_same_op_count(
        partial(op_counts, qz, 4, device), partial(op_counts, qz, 12, device),
        what="quantize_per_channel and the int4 functions", small_desc="w (4, 64)", large_desc="w (12, 64)",
    )  # fmt: skip
