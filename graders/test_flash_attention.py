"""Grader for the flash_attention kata: flash_attention, flash_attention_backward, FlashAttention.

Outputs are checked against F.scaled_dot_product_attention and log-sum-exps against
torch.logsumexp of the masked scores, in float64 with an explicit bottom-right causal or
sliding-window mask; gradients against torch's autograd through the same attention. Block
sizes from 1 to larger than the sequence, ragged last blocks, logits scaled x100 and
queries that see no key at all break the usual mistakes of a hand-written online softmax.
Memory is checked by recording every tensor the code makes (none may approach a (T, S)
matrix), work by counting FLOPs (tiles the mask hides must be skipped), and the rules
forbid every softmax and fused attention kernel.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course
from kata.checks import describe_call, expect_close, expect_tensor, golden, randn

TOPIC = course.get("flash_attention")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]
# No tensor the code makes may hold more than this many times max(one tile of scores for
# every batch and head, the largest output): the reference's largest is 1x (its output
# buffers, at most 1,024 elements against the bound 4,096); on the memory checks' shapes a
# (T, S) score matrix is 8x the bound, a (block_q, S) row of scores 2x.
MEMORY_FACTOR = 2
# FLOPs may exceed those of the tiles that intersect the mask by this factor (the
# reference: exactly 1x).
WORK_FACTOR = 1.15


@pytest.fixture(scope="module")
def fa(impl):
    return impl.load("flash_attention")


# ---------------------------------------------------------------- torch's reference


def allowed_mask(t: int, s: int, *, is_causal=False, window=None, device="cpu") -> torch.Tensor | None:
    """(T, S) bool, True = may attend: bottom-right causal, and the sliding window i' - w < j <= i'."""
    if not is_causal and window is None:
        return None
    i = torch.arange(t, device=device)[:, None] + (s - t)
    j = torch.arange(s, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    return allowed


def torch_attention(q, k, v, *, is_causal=False, scale=None, window=None, math_only=False, **_blocks):
    """torch's attention under this kata's masks; math_only picks torch's unfused kernel."""
    mask = allowed_mask(q.shape[-2], k.shape[-2], is_causal=is_causal, window=window, device=q.device)
    if math_only:  # the error a plain implementation in q's dtype is bound to make
        return checks.unfused_attention(q, k, v, mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def torch_lse(q, k, *, is_causal=False, scale=None, window=None, **_blocks):
    """The log-sum-exp of each query's scaled, masked scores (B, H, T), in q's dtype."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    mask = allowed_mask(q.shape[-2], k.shape[-2], is_causal=is_causal, window=window, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return torch.logsumexp(scores, dim=-1)


# ---------------------------------------------------------------- inputs


def qkv(b, h, t, s, d, device, dtype=torch.float32, *, seed=1, q_scale=1.0, non_contiguous=False):
    """Seeded q (B, H, T, D), k and v (B, H, S, D)."""
    if non_contiguous:  # as a model passes them: (B, T, H, D) projections viewed as (B, H, T, D)
        q = randn(b, t, h, d, seed=seed, device=device, dtype=dtype, scale=q_scale).transpose(1, 2)
        k, v = (randn(b, s, h, d, seed=seed + n, device=device, dtype=dtype).transpose(1, 2) for n in (1, 2))
        return q, k, v
    q = randn(b, h, t, d, seed=seed, device=device, dtype=dtype, scale=q_scale)
    k, v = (randn(b, h, s, d, seed=seed + n, device=device, dtype=dtype) for n in (1, 2))
    return q, k, v


# name: ((B, H, T, S, D), keyword arguments, extra input options)
CASES = {
    "square": ((2, 3, 40, 40, 16), dict(block_q=16, block_k=16), {}),
    "fewer_queries_than_keys": ((2, 2, 24, 56, 16), dict(block_q=16, block_k=16), {}),
    "causal": ((2, 3, 40, 40, 16), dict(is_causal=True, block_q=16, block_k=16), {}),
    "causal_fewer_queries": ((2, 2, 24, 56, 16), dict(is_causal=True, block_q=16, block_k=16), {}),
    "window": ((2, 2, 56, 56, 16), dict(window=12, block_q=16, block_k=16), {}),
    "window_fewer_queries": ((1, 2, 24, 56, 16), dict(window=20, block_q=16, block_k=16), {}),
    "window_with_is_causal": ((1, 2, 40, 40, 16), dict(is_causal=True, window=7, block_q=8, block_k=16), {}),
    "explicit_scale": ((2, 2, 40, 40, 16), dict(is_causal=True, scale=0.3, block_q=16, block_k=16), {}),
    "non_contiguous": ((2, 2, 40, 40, 16), dict(is_causal=True, block_q=16, block_k=16), dict(non_contiguous=True)),
}

# Block sizes: one query and one key per tile, ragged last blocks, tiles of different
# shapes, odd sizes, and the default 64 (larger than T and S).
BLOCKS = {
    "block=1": ((1, 2, 9, 13, 8), dict(is_causal=True, block_q=1, block_k=1)),
    "block=16 ragged": ((2, 2, 37, 45, 8), dict(is_causal=True, block_q=16, block_k=16)),
    "block_q=16 block_k=64": ((2, 2, 37, 45, 8), dict(window=10, block_q=16, block_k=64)),
    "block_q=7 block_k=5": ((1, 2, 37, 45, 8), dict(window=9, block_q=7, block_k=5)),
    "default blocks (64) larger than T and S": ((2, 2, 37, 45, 8), dict(is_causal=True)),
}


def call_forward(fa, q, k, v, *, parts=("out", "lse"), **kwargs):
    """(out, lse, what) from the learner's flash_attention, with the shapes and dtypes of
    the parts a check grades checked."""
    what = describe_call("flash_attention", q, k, v, **kwargs)
    result = rules.call(fa.flash_attention, q, k, v, what=what, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise checks.Wrong(f"{what} returned {checks.describe(result)}; expected a tuple (out, lse)")
    out, lse = result
    b, h, t, d = q.shape
    if "out" in parts:
        expect_tensor(out, shape=(b, h, t, d), dtype=q.dtype, device=q.device, what=f"{what}: out")
    if "lse" in parts:
        expect_tensor(lse, shape=(b, h, t), dtype=torch.float32, device=q.device, what=f"{what}: lse")
    return out, lse, what


def check_forward(fa, q, k, v, kwargs, *, check_out=True, check_lse=True):
    parts = ("out",) * check_out + ("lse",) * check_lse
    out, lse, what = call_forward(fa, q, k, v, parts=parts, **kwargs)
    gq, gk, gv = (golden(t) for t in (q, k, v))
    if check_out:
        if q.dtype == torch.float32:
            baseline = torch_attention(q, k, v, **kwargs)
        else:
            baseline = torch_attention(q, k, v, **kwargs, math_only=True)
        expect_close(out, torch_attention(gq, gk, gv, **kwargs), what=f"{what}: out", dtype=q.dtype, device=q.device, baseline=baseline)
    if check_lse:
        expect_close(lse, torch_lse(gq, gk, **kwargs), what=f"{what}: lse", dtype=torch.float32, device=q.device,
                     baseline=torch_lse(q, k, **kwargs))  # fmt: skip
    return out, lse


def case_inputs(name, device, dtype=torch.float32):
    (b, h, t, s, d), kwargs, options = CASES[name]
    return qkv(b, h, t, s, d, device, dtype, **options), kwargs


# ---------------------------------------------------------------- forward values


@pytest.mark.parametrize("case", list(CASES))
def test_output_matches_torch(fa, device, case):
    (q, k, v), kwargs = case_inputs(case, device)
    check_forward(fa, q, k, v, kwargs, check_lse=False)


@pytest.mark.parametrize("case", list(CASES))
def test_lse_matches_torch(fa, device, case):
    """lse (B, H, T) float32: logsumexp over the allowed keys of the scaled scores."""
    (q, k, v), kwargs = case_inputs(case, device)
    check_forward(fa, q, k, v, kwargs, check_out=False)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_sizes(fa, device, block):
    """T and S not multiples of the blocks; blocks of one; blocks larger than the sequence."""
    (b, h, t, s, d), kwargs = BLOCKS[block]
    q, k, v = qkv(b, h, t, s, d, device, seed=3)
    check_forward(fa, q, k, v, kwargs)


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_stable_for_large_logits(fa, device, mask):
    """Scores x100 (q scaled by 100): exp of an unshifted score overflows; the running max
    changes from tile to tile, so every rescale matters."""
    q, k, v = qkv(2, 2, 40, 48, 16, device, seed=5, q_scale=100.0)
    check_forward(fa, q, k, v, dict(is_causal=mask == "causal", block_q=16, block_k=16))


def test_queries_without_keys(fa, device):
    """Causal with T = 38 > S = 24: query i sees keys j <= i - 14, so the first 14 queries
    see none (out 0, lse -inf, as torch gives), and the first block of 16 mixes them with
    two that do."""
    q, k, v = qkv(2, 2, 38, 24, 8, device, seed=7)
    kwargs = dict(is_causal=True, block_q=16, block_k=16)
    out, lse, what = call_forward(fa, q, k, v, **kwargs)
    blind = 38 - 24
    if not (torch.equal(out[:, :, :blind].cpu(), torch.zeros(2, 2, blind, 8)) and bool((lse[:, :, :blind] == -math.inf).all())):
        raise checks.Wrong(
            f"{what}: the first {blind} queries may attend no key (bottom-right causal, T > S); expected out = 0 and "
            f"lse = -inf there, got out values from {out[:, :, :blind].min().item():.3g} to {out[:, :, :blind].max().item():.3g} "
            f"(nan: {bool(out[:, :, :blind].isnan().any())}) and lse {lse[0, 0, :blind].tolist()[:4]}..."
        )
    check_forward(fa, q, k, v, kwargs)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", ["causal_fewer_queries", "window"])
def test_low_precision_output(fa, device, case, dtype):
    """out in q's dtype, within 4x the error of torch's unfused kernel in that dtype."""
    checks.need_dtype(dtype, device)
    (q, k, v), kwargs = case_inputs(case, device, dtype)
    check_forward(fa, q, k, v, kwargs, check_lse=False)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_lse(fa, device, dtype):
    """lse stays float32 for half-precision inputs (the backward needs its precision)."""
    checks.need_dtype(dtype, device)
    (q, k, v), kwargs = case_inputs("causal_fewer_queries", device, dtype)
    check_forward(fa, q, k, v, kwargs, check_out=False)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_statistics_in_float32(fa, device, direction, dtype):
    """For half-precision inputs every matmul and reduction (scores, running sum, p @ v,
    D_i, the gradients' products) returns float32 and reads float32 values or the inputs
    themselves. The values alone cannot show it on small inputs: a bfloat16 accumulator
    stays inside bfloat16's tolerance over a few tiles, and loses digits over thousands."""
    checks.need_dtype(dtype, device)
    (q, k, v), kwargs = case_inputs("causal_fewer_queries", device, dtype)
    if direction == "forward":
        what = describe_call("flash_attention", q, k, v, **kwargs)
        ops = rules.record_ops(fa.flash_attention, q, k, v, **kwargs)
    else:
        out = torch_attention(q, k, v, **kwargs)
        lse = torch_lse(q.float(), k.float(), **kwargs)
        what = describe_call("flash_attention_backward", q, k, v, out, lse, out, **kwargs)
        ops = rules.record_ops(fa.flash_attention_backward, q, k, v, out, lse, out, **kwargs)
    checks.expect_reductions_in_float32(ops, what=what)


# ---------------------------------------------------------------- gradients


def torch_grads(q, k, v, upstream, kwargs, *, dtype=torch.float64):
    """torch's gradients of attention: float64 golden, or in q's dtype (torch's own error)."""
    if dtype == torch.float64:
        q, k, v, upstream = (golden(t).requires_grad_(t is not upstream) for t in (q, k, v, upstream))
    else:
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = torch_attention(q, k, v, **kwargs)
    return torch.autograd.grad(out, (q, k, v), upstream)


BACKWARD_CASES = ["square", "causal_fewer_queries", "window", "explicit_scale", "window_with_is_causal"]


def check_backward(fa, device, case, which):
    """flash_attention_backward with torch's own out and lse; the gradient `which` (dq, dk
    or dv) against autograd through torch's attention."""
    (q, k, v), kwargs = case_inputs(case, device)
    out = torch_attention(golden(q), golden(k), golden(v), **kwargs).to(device, q.dtype)
    lse = torch_lse(golden(q), golden(k), **kwargs).to(device, torch.float32)
    upstream = randn(*out.shape, seed=9, device=device)
    what = describe_call("flash_attention_backward", q, k, v, out, lse, upstream, **kwargs)
    result = rules.call(fa.flash_attention_backward, q, k, v, out, lse, upstream, what=what, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise checks.Wrong(f"{what} returned {checks.describe(result)}; expected a tuple (dq, dk, dv)")
    i = ("dq", "dk", "dv").index(which)
    want = torch_grads(q, k, v, upstream, kwargs)[i]
    base = torch_grads(q, k, v, upstream, kwargs, dtype=q.dtype)[i]
    expect_close(result[i], want, what=f"{what}: {which}", dtype=q.dtype, device=device, baseline=base)


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_dq_matches_torch(fa, device, case):
    check_backward(fa, device, case, "dq")


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_dk_matches_torch(fa, device, case):
    check_backward(fa, device, case, "dk")


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_dv_matches_torch(fa, device, case):
    check_backward(fa, device, case, "dv")


@pytest.mark.parametrize("case", ["causal_fewer_queries", "window_fewer_queries", "explicit_scale"])
def test_autograd_function_matches_torch(fa, device, case):
    """FlashAttention.apply(q, k, v, is_causal, scale, window, 16, 16), then backward: out
    and the gradients of q, k and v against torch's attention under autograd."""
    (q, k, v), kwargs = case_inputs(case, device)
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    positional = (kwargs.get("is_causal", False), kwargs.get("scale"), kwargs.get("window"), kwargs["block_q"], kwargs["block_k"])
    what = describe_call("FlashAttention.apply", q, k, v, *positional)
    upstream = randn(*q.shape, seed=11, device=device)
    out = rules.call(fa.FlashAttention.apply, q, k, v, *positional, what=what, backward=upstream)
    expect_tensor(out, shape=q.shape, dtype=q.dtype, device=device, what=what)
    gq, gk, gv = (golden(t) for t in (q, k, v))
    expect_close(out, torch_attention(gq, gk, gv, **kwargs), what=what, dtype=q.dtype, device=device,
                 baseline=torch_attention(q.detach(), k.detach(), v.detach(), **kwargs))  # fmt: skip
    want = torch_grads(q, k, v, upstream, kwargs)
    base = torch_grads(q, k, v, upstream, kwargs, dtype=q.dtype)
    for name, t, w, b in zip("qkv", (q, k, v), want, base):
        if t.grad is None:
            raise checks.Wrong(f"after backward through {what}, {name}.grad is None: does backward return (dq, dk, dv, None, ...)?")
        expect_close(t.grad, w, what=f"the gradient of {name} through {what}", dtype=q.dtype, device=device, baseline=b)


def saved_for_backward(apply, q, k, v, *args):
    """Runs in the executor: FlashAttention.apply under autograd, noting the shape of every
    tensor saved for backward (torch.autograd.graph.saved_tensors_hooks sees them all)."""
    shapes = []

    def pack(t):
        shapes.append(list(t.shape))
        return t

    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        apply(q, k, v, *args)
    return shapes


def test_autograd_saves_no_probabilities(fa, device):
    """The forward saves q, k, v, out and lse, nothing bigger: no probabilities or scores."""
    b, h, t, s, d = 1, 2, 64, 64, 8
    q, k, v = qkv(b, h, t, s, d, device, seed=13)
    what = describe_call("FlashAttention.apply", q, k, v, True, None, None, 16, 16)
    shapes = rules.call(saved_for_backward, fa.FlashAttention.apply, q, k, v, True, None, None, 16, 16, what=what)
    total = sum(math.prod(shape) for shape in shapes)
    allowed = 4 * b * h * t * d + b * h * t  # q, k, v, out (S = T here) and lse
    if total > allowed:
        raise checks.Wrong(
            f"{what} saved {total:,} elements for backward ({len(shapes)} tensors, shapes {shapes[:6]}); q, k, v, out and "
            f"lse hold {allowed:,}: save those with ctx.save_for_backward and recompute the probabilities in backward"
        )


# ---------------------------------------------------------------- memory

# A (T, S) score matrix (32,768 elements for both heads) and a (block_q, S) row of scores
# (8,192) stand above the bound 2 x max(tile 2,048, out 1,024) = 4,096; a (T, S) mask
# (16,384) too. A tiny head dim keeps the output small next to them, and 16 tiles cheap.
MEMORY_SHAPE = (1, 2, 128, 128, 4)
MEMORY_BLOCKS = dict(block_q=32, block_k=32)


def expect_tile_sized(ops, *, what, tile, output):
    limit = MEMORY_FACTOR * max(tile, output)
    n, shape, op = checks.largest_new_tensor(ops)
    if n > limit:
        raise checks.Wrong(
            f"{what} made a tensor of {n:,} elements (shape {tuple(shape)}, by {op}); at most {limit:,} are allowed "
            f"({MEMORY_FACTOR} x max(one {MEMORY_BLOCKS['block_q']} x {MEMORY_BLOCKS['block_k']} tile per batch and head = {tile:,}, "
            f"the output = {output:,})): keep one tile of scores at a time, and build masks per tile"
        )


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_forward_memory_is_tile_sized(fa, device, mask):
    b, h, t, s, d = MEMORY_SHAPE
    q, k, v = qkv(b, h, t, s, d, device, seed=15)
    kwargs = dict(is_causal=mask == "causal", **MEMORY_BLOCKS)
    ops = rules.record_ops(fa.flash_attention, q, k, v, **kwargs)
    tile = b * h * MEMORY_BLOCKS["block_q"] * MEMORY_BLOCKS["block_k"]
    expect_tile_sized(ops, what=describe_call("flash_attention", q, k, v, **kwargs), tile=tile, output=b * h * t * d)


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_backward_memory_is_tile_sized(fa, device, mask):
    b, h, t, s, d = MEMORY_SHAPE
    q, k, v = qkv(b, h, t, s, d, device, seed=15)
    kwargs = dict(is_causal=mask == "causal", **MEMORY_BLOCKS)
    out = torch_attention(q, k, v, **kwargs)
    lse = torch_lse(q, k, **kwargs).float()
    upstream = randn(*out.shape, seed=16, device=device)
    ops = rules.record_ops(fa.flash_attention_backward, q, k, v, out, lse, upstream, **kwargs)
    tile = b * h * MEMORY_BLOCKS["block_q"] * MEMORY_BLOCKS["block_k"]
    what = describe_call("flash_attention_backward", q, k, v, out, lse, upstream, **kwargs)
    expect_tile_sized(ops, what=what, tile=tile, output=b * h * max(t, s) * d)


# ---------------------------------------------------------------- work

WORK_SHAPE = (1, 2, 96, 96, 8)
WORK_BLOCKS = dict(block_q=16, block_k=16)


def needed_tile_fraction(t, s, *, block_q, block_k, is_causal=False, window=None):
    """The share of the grid's tiles (weighted by their size) that hold at least one allowed score."""
    mask = allowed_mask(t, s, is_causal=is_causal, window=window)
    needed = 0
    for i0 in range(0, t, block_q):
        for j0 in range(0, s, block_k):
            tile = mask[i0 : i0 + block_q, j0 : j0 + block_k]
            if tile.any():
                needed += tile.numel()
    return needed / (t * s)


def flops_of(fa, direction, device, **kwargs):
    b, h, t, s, d = WORK_SHAPE
    q, k, v = qkv(b, h, t, s, d, device, seed=17)
    if direction == "forward":
        return rules.count_flops(fa.flash_attention, q, k, v, **kwargs, **WORK_BLOCKS)
    out = torch_attention(q, k, v, **kwargs)
    lse = torch_lse(q, k, **kwargs).float()
    upstream = randn(*out.shape, seed=18, device=device)
    return rules.count_flops(fa.flash_attention_backward, q, k, v, out, lse, upstream, **kwargs, **WORK_BLOCKS)


def expect_tiles_skipped(fa, device, direction, mask_kwargs, *, described):
    b, h, t, s, d = WORK_SHAPE
    name = "flash_attention" if direction == "forward" else "flash_attention_backward"
    full = flops_of(fa, direction, device)
    if full == 0:
        raise checks.Wrong(f"{name} on (1, 2, {t}, {d}) ran no matmul at all: compute each tile's scores with q @ k^T")
    masked = flops_of(fa, direction, device, **mask_kwargs)
    fraction = needed_tile_fraction(t, s, **WORK_BLOCKS, **mask_kwargs)
    if masked > WORK_FACTOR * fraction * full:
        raise checks.Wrong(
            f"{name} on q, k, v (1, 2, {t}, {d}) with {described} and 16 x 16 tiles did {masked:,} FLOPs, "
            f"{masked / full:.2f} of the {full:,} it does unmasked; only {fraction:.2f} of the tiles hold an allowed "
            f"score: skip the tiles the mask hides completely instead of computing and masking them"
        )


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_causal_skips_masked_tiles(fa, device, direction):
    """Causal, T = S = 96, 16 x 16 tiles: 21 of the 36 tiles are needed, about half the FLOPs."""
    expect_tiles_skipped(fa, device, direction, dict(is_causal=True), described="is_causal=True")


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_window_work_is_linear(fa, device, direction):
    """window=8, T = S = 96, 16 x 16 tiles: 11 of the 36 tiles are needed, work about T * (w + block)."""
    expect_tiles_skipped(fa, device, direction, dict(window=8), described="window=8")


def op_counts(fa, b, h, device) -> Counter:
    q, k, v = qkv(b, h, 24, 24, 8, device, seed=19)
    kwargs = dict(is_causal=True, block_q=8, block_k=8)
    counts = rules.count_ops(fa.flash_attention, q, k, v, **kwargs)
    out = torch_attention(q, k, v, **kwargs)
    lse = torch_lse(q, k, **kwargs).float()
    counts.update(rules.count_ops(fa.flash_attention_backward, q, k, v, out, lse, out, **kwargs))
    return counts


def test_no_loop_over_batch_or_heads(fa, device):
    """flash_attention and flash_attention_backward run the same aten ops for B = H = 2 as for B = 3, H = 5 (size-1 dims are avoided: they change which copies torch makes)."""
    checks.expect_same_op_count(
        partial(op_counts, fa, 2, 2, device), partial(op_counts, fa, 3, 5, device),
        what="flash_attention with flash_attention_backward", small_desc="B=2, H=2", large_desc="B=3, H=5",
    )  # fmt: skip
