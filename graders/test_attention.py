"""Grader for the attention kata: causal_mask, scaled_dot_product_attention, MultiHeadAttention.

Every value is checked against torch's own ops (F.scaled_dot_product_attention with an
explicit bottom-right mask, nn.MultiheadAttention with copied weights) computed in float64;
gradients against torch's autograd; rules (no fused attention kernel, inputs unmodified)
on every call; work (no loop over batch or heads) and speed against the reference.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("attention")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def attention(impl):
    return impl.load("attention")


@pytest.fixture(scope="module")
def reference_attention(reference):
    return reference.load("attention")



# ---------------------------------------------------------------- torch's reference


def torch_causal_mask(t_q: int, t_k: int, device="cpu") -> torch.Tensor:
    """Bottom-right aligned: the same mask F.scaled_dot_product_attention's is_causal gives when t_q == t_k."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(t_k - t_q)


def with_causal(mask, t_q, t_k, device):
    causal = torch_causal_mask(t_q, t_k, device)
    if mask is None:
        return causal
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))


def torch_sdpa(q, k, v, mask=None, *, is_causal=False, scale=None, math_only=False):
    """torch's attention under this kata's API: explicit bottom-right causal mask and
    leading dimensions broadcast up front. math_only picks torch's unfused kernel."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    if is_causal:
        mask = with_causal(mask, t_q, t_k, q.device)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (q, k, v))
    if mask is not None:
        mask = mask.expand(*lead, t_q, t_k)
    if math_only:
        return checks.unfused_attention(q, k, v, mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# ---------------------------------------------------------------- inputs


def padding_mask(batch: int, t_k: int, device) -> torch.Tensor:
    """(B, 1, 1, t_k), True = real token; batch b has its last b keys padded; key 0 always real."""
    lengths = torch.tensor([max(1, t_k - b) for b in range(batch)])
    return (torch.arange(t_k)[None, :] < lengths[:, None])[:, None, None, :].to(device)


def sdpa_case(name: str, device, dtype=torch.float32):
    """(args, kwargs) for one named input case of scaled_dot_product_attention."""

    def r(*shape, seed, scale=1.0):
        return randn(*shape, seed=seed, device=device, dtype=dtype, scale=scale)

    q, k, v = r(2, 3, 6, 8, seed=1), r(2, 3, 6, 8, seed=2), r(2, 3, 6, 8, seed=3)
    cases = {
        "3d": ((r(2, 5, 8, seed=1), r(2, 5, 8, seed=2), r(2, 5, 8, seed=3)), {}),
        "4d": ((q, k, v), {}),
        # Any number of leading dims: code written for (B, H, T, D) alone fails here.
        "5d": ((r(2, 2, 3, 5, 8, seed=1), r(2, 2, 3, 7, 8, seed=2), r(2, 2, 3, 7, 6, seed=3)), {"is_causal": True}),
        "fewer_queries_than_keys": ((r(2, 4, 3, 8, seed=1), r(2, 4, 7, 8, seed=2), r(2, 4, 7, 12, seed=3)), {}),
        "more_queries_than_keys": ((r(1, 2, 9, 8, seed=1), r(1, 2, 4, 8, seed=2), r(1, 2, 4, 8, seed=3)), {}),
        "broadcast_leading_dims": ((r(2, 3, 5, 8, seed=1), r(1, 3, 7, 8, seed=2), r(2, 1, 7, 8, seed=3)), {}),
        "single_key": ((r(2, 4, 8, seed=1), r(2, 1, 8, seed=2), r(2, 1, 8, seed=3)), {}),
        "bool_padding_mask": ((q, k, v, padding_mask(2, 6, device)), {}),
        "float_mask": ((q, k, v, r(6, 6, seed=4)), {}),
        "causal": ((q, k, v), {"is_causal": True}),
        "causal_fewer_queries": ((r(2, 3, 3, 8, seed=1), r(2, 3, 8, 8, seed=2), r(2, 3, 8, 8, seed=3)), {"is_causal": True}),
        "causal_and_bool_mask": ((q, k, v, padding_mask(2, 6, device)), {"is_causal": True}),
        "causal_and_float_mask": ((q, k, v, r(2, 1, 6, 6, seed=4)), {"is_causal": True}),
        "explicit_scale": ((q, k, v), {"scale": 0.3}),
        "zero_scale": ((q, k, v, padding_mask(2, 6, device)), {"scale": 0.0}),
        "float32_mask": ((q, k, v, randn(2, 1, 6, 6, seed=4, device=device)), {"is_causal": True}),
        "scale_with_value_dim": ((r(2, 4, 16, seed=1), r(2, 5, 16, seed=2), r(2, 5, 4, seed=3)), {}),
        "large_magnitude": ((r(2, 3, 6, 8, seed=1, scale=30), r(2, 3, 6, 8, seed=2, scale=30), v), {"is_causal": True}),
        "non_contiguous": (tuple(r(2, 6, 3, 8, seed=s).transpose(1, 2) for s in (1, 2, 3)), {}),
    }
    return cases[name]


SDPA_CASES = [
    "3d", "4d", "5d", "fewer_queries_than_keys", "more_queries_than_keys", "broadcast_leading_dims",
    "single_key", "bool_padding_mask", "float_mask", "causal", "causal_fewer_queries",
    "causal_and_bool_mask", "causal_and_float_mask", "explicit_scale", "zero_scale", "scale_with_value_dim",
    "large_magnitude", "non_contiguous",
]  # fmt: skip


def output_shape(q, k, v):
    return (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]), q.shape[-2], v.shape[-1])


# ---------------------------------------------------------------- causal_mask


@pytest.mark.parametrize("n", [1, 4, 7], ids=lambda n: f"n={n}")
def test_causal_mask_square(attention, device, n):
    what = f"causal_mask({n})"
    got = rules.call(attention.causal_mask, n, device=device)
    checks.expect_tensor(got, shape=(n, n), dtype=torch.bool, device=device, what=what)
    if not torch.equal(got.cpu(), torch_causal_mask(n, n)):
        raise checks.Wrong(f"{what} returned\n{got.int().cpu()}\nexpected (1 = may attend)\n{torch_causal_mask(n, n).int()}")


@pytest.mark.parametrize("t_q, t_k", [(1, 5), (3, 7), (2, 3)], ids=["t_q=1,t_k=5", "t_q=3,t_k=7", "t_q=2,t_k=3"])
def test_causal_mask_is_bottom_right(attention, device, t_q, t_k):
    what = f"causal_mask({t_q}, {t_k})"
    got = rules.call(attention.causal_mask, t_q, t_k, device=device)
    want = torch_causal_mask(t_q, t_k)
    checks.expect_tensor(got, shape=(t_q, t_k), dtype=torch.bool, device=device, what=what)
    if not torch.equal(got.cpu(), want):
        raise checks.Wrong(
            f"{what} returned\n{got.int().cpu()}\nexpected (1 = may attend; the last query sees every key)\n{want.int()}"
        )


@pytest.mark.parametrize("where", ["device", "meta"])
def test_causal_mask_on_requested_device(attention, device, where):
    """The mask is made where it is asked for (a CPU mask on a GPU fails at the first use).
    'meta' lets a CPU-only run check that device= is honoured at all."""
    target = device if where == "device" else torch.device("meta")
    got = rules.call(attention.causal_mask, 3, 5, device=target)
    checks.expect_tensor(got, shape=(3, 5), dtype=torch.bool, device=target, what=f"causal_mask(3, 5, device={target.type!r})")


def test_causal_mask_rejects_fewer_keys_than_queries(attention):
    rules.expect_raises(ValueError, attention.causal_mask, 5, 3, what="causal_mask(5, 3)")


# ---------------------------------------------------------------- scaled_dot_product_attention


@pytest.mark.parametrize("case", SDPA_CASES)
def test_matches_torch(attention, device, case):
    args, kwargs = sdpa_case(case, device)
    what = describe_call("scaled_dot_product_attention", *args, **kwargs)
    got = rules.call(attention.scaled_dot_product_attention, *args, what=what, **kwargs)
    want = torch_sdpa(*[golden(a) for a in args], **kwargs)
    baseline = torch_sdpa(*args, **kwargs)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


LOW_PRECISION_CASES = ["4d", "causal_and_bool_mask", "fewer_queries_than_keys", "float32_mask"]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
def test_low_precision(attention, device, case, dtype):
    """The output is in q's dtype, even when a float32 mask would promote the scores."""
    checks.need_dtype(dtype, device)
    args, kwargs = sdpa_case(case, device, dtype)
    what = describe_call("scaled_dot_product_attention", *args, **kwargs)
    got = rules.call(attention.scaled_dot_product_attention, *args, what=what, **kwargs)
    want = torch_sdpa(*[golden(a) for a in args], **kwargs)
    # torch's unfused kernel in this dtype: the error a plain implementation is bound to make.
    low = [a.to(dtype) if a.is_floating_point() else a for a in args]
    baseline = torch_sdpa(*low, **kwargs, math_only=True)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ["bool_padding_mask", "causal_and_bool_mask"])
def test_masked_weights_sum_to_one(attention, device, case):
    """Attention is an average of the values: with every value 1, every output is 1, masked
    or not. Weights zeroed after the softmax no longer sum to 1 and fall short of it."""
    args, kwargs = sdpa_case(case, device)
    q, k, v, mask = args
    args = (q, k, torch.ones_like(v), mask)
    what = describe_call("scaled_dot_product_attention", *args, **kwargs) + " with every value 1"
    got = rules.call(attention.scaled_dot_product_attention, *args, what=what, **kwargs)
    expect_close(got, torch.ones(output_shape(*args[:3]), dtype=torch.float64), what=what, dtype=torch.float32, device=device)


@pytest.mark.parametrize("case", ["causal_and_bool_mask", "fewer_queries_than_keys", "float_mask", "broadcast_leading_dims"])
def test_gradients_match_torch(attention, device, case):
    args, kwargs = sdpa_case(case, device)
    q, k, v = (t.detach().clone().requires_grad_() for t in args[:3])
    args = (q, k, v, *args[3:])
    what = describe_call("scaled_dot_product_attention", *args, **kwargs)
    upstream = randn(*output_shape(q, k, v), seed=9, device=device)
    out = rules.call(attention.scaled_dot_product_attention, *args, what=what, backward=upstream, **kwargs)
    checks.expect_tensor(out, shape=output_shape(q, k, v), dtype=q.dtype, device=device, what=what)
    grads = (q.grad, k.grad, v.grad)
    gq, gk, gv = (golden(t) for t in (q, k, v))
    want = torch.autograd.grad(torch_sdpa(gq, gk, gv, *[golden(a) for a in args[3:]], **kwargs), (gq, gk, gv), golden(upstream))
    base = torch.autograd.grad(torch_sdpa(*args, **kwargs), (q, k, v), upstream)
    for name, g, w, b in zip("qkv", grads, want, base):
        if g is None:
            raise checks.Wrong(f"{what}: no gradient reaches {name}; is something detached?")
        expect_close(g, w, what=f"the gradient of {name} through {what}", dtype=torch.float32, device=device, baseline=b)


def sdpa_ops(attention, batch, heads, t, device):
    q, k, v = (randn(batch, heads, t, 8, seed=s, device=device) for s in (1, 2, 3))
    return rules.count_ops(attention.scaled_dot_product_attention, q, k, v, padding_mask(batch, t, device), is_causal=True)


def test_no_loop_over_batch_or_heads(attention, device):
    checks.expect_same_op_count(
        partial(sdpa_ops, attention, 2, 2, 5, device), partial(sdpa_ops, attention, 5, 6, 5, device),
        what="scaled_dot_product_attention", small_desc="B=2, H=2", large_desc="B=5, H=6",
    )  # fmt: skip


def test_no_loop_over_positions(attention, device):
    checks.expect_same_op_count(
        partial(sdpa_ops, attention, 2, 2, 4, device), partial(sdpa_ops, attention, 2, 2, 16, device),
        what="scaled_dot_product_attention", small_desc="t_q = t_k = 4", large_desc="t_q = t_k = 16",
    )  # fmt: skip


def test_speed(attention, reference_attention, device, record_property):
    """A hand-written softmax (even one that computes exp twice) passes with room to
    spare; scores built by broadcasting q against k, or loops, do not (README). The head
    dim is 64, as in most models: with 16, the softmax was most of the work and a correct
    hand-written one measured 2.2-3.8x the reference's torch.softmax under load."""
    q, k, v = (randn(8, 16, 64, 64, seed=s, device=device) for s in (1, 2, 3))
    mask = padding_mask(8, 64, device)
    limit = TOPIC.speed[device.type]
    ratio = rules.speed_ratio(
        partial(attention.scaled_dot_product_attention, q, k, v, mask, is_causal=True),
        partial(reference_attention.scaled_dot_product_attention, q, k, v, mask, is_causal=True),
        device=device, near=limit,
    )  # fmt: skip
    record_property("speed_ratio", round(ratio, 3))
    checks.expect_fast_enough(ratio, limit, what="scaled_dot_product_attention (8, 16, 64, 64)", device=device)


# ---------------------------------------------------------------- MultiHeadAttention


def make_mha(attention, d_model, n_heads, device, *, bias=True, dtype=torch.float32):
    """The learner's module with seeded weights, so every run grades the same numbers."""
    mha = rules.call(attention.MultiHeadAttention, d_model, n_heads, bias=bias, what=f"MultiHeadAttention({d_model}, {n_heads}, bias={bias})")
    seeded = {name: randn(*p.shape, seed=100 + i, scale=d_model**-0.5, device="cpu") for i, (name, p) in enumerate(sorted(mha.named_parameters()))}
    rules.call(harness.assign_parameters, mha, seeded)
    return mha.to(device=device, dtype=dtype)


def mha_weights(mha) -> dict:
    """The module's projection weights (and biases), read in one request."""
    w = {name: t.detach() for name, t in mha.state_dict().items()}
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"):
        if name not in w:
            raise checks.Wrong(f"{checks.type_name(mha)} has no {name}: expected q_proj, k_proj, v_proj and out_proj (nn.Linear)")
    return w


def torch_mha(mha, x, context=None, *, mask=None, is_causal=False, dtype=None):
    """nn.MultiheadAttention with mha's weights, in `dtype` on the CPU, fed this kata's mask convention."""
    dtype = dtype or torch.float64
    w = mha_weights(mha)
    d_model, h = w["q_proj.weight"].shape[1], mha.n_heads
    bias = "q_proj.bias" in w
    ref = nn.MultiheadAttention(d_model, h, bias=bias, batch_first=True)
    ref = ref.to(device=x.device if dtype != torch.float64 else "cpu", dtype=dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([w["q_proj.weight"], w["k_proj.weight"], w["v_proj.weight"]]))
        ref.out_proj.weight.copy_(w["out_proj.weight"])
        if bias:
            ref.in_proj_bias.copy_(torch.cat([w["q_proj.bias"], w["k_proj.bias"], w["v_proj.bias"]]))
            ref.out_proj.bias.copy_(w["out_proj.bias"])
    convert = golden if dtype == torch.float64 else (lambda t: t)
    x = convert(x)
    context = x if context is None else convert(context)
    (B, T, _), S = x.shape, context.shape[1]
    if is_causal:
        mask = with_causal(mask, T, S, x.device if mask is None else mask.device)
    attn_mask = None
    if mask is not None:
        mask = convert(mask) if mask.is_floating_point() else mask.to(x.device)
        mask = mask.expand(B, h, T, S).reshape(B * h, T, S)
        # nn.MultiheadAttention's bool mask is the opposite of ours: True = may NOT attend.
        attn_mask = ~mask if mask.dtype == torch.bool else mask
    out, _ = ref(x, context, context, attn_mask=attn_mask, need_weights=False)
    return out, ref


def mha_case(name, device):
    """(d_model, n_heads, bias, x, context, forward kwargs) for one named module case."""
    x = randn(2, 6, 32, seed=10, device=device)
    ctx = randn(2, 9, 32, seed=11, device=device)
    cases = {
        "self": (32, 4, True, x, None, {}),
        "causal": (32, 4, True, x, None, {"is_causal": True}),
        "padding_mask": (32, 4, True, x, None, {"mask": padding_mask(2, 6, device)}),
        "float_mask": (32, 4, True, x, None, {"mask": randn(6, 6, seed=12, device=device)}),
        "per_head_bool_mask": (32, 4, True, x, None, {"mask": randn(2, 4, 6, 6, seed=13, device=device) > -1}),
        "no_bias": (32, 8, False, x, None, {"is_causal": True}),
        "cross_attention": (32, 4, True, x, ctx, {}),
        "cross_attention_padding": (32, 2, True, x, ctx, {"mask": padding_mask(2, 9, device)}),
        "cross_attention_causal": (32, 4, True, x, ctx, {"is_causal": True}),
        "one_head": (32, 1, True, x, ctx, {}),
    }
    return cases[name]


MHA_CASES = ["self", "causal", "padding_mask", "float_mask", "per_head_bool_mask", "no_bias", "cross_attention",
             "cross_attention_padding", "cross_attention_causal", "one_head"]  # fmt: skip


def call_mha(mha, x, context, kwargs, backward=None):
    what = describe_call(f"MultiHeadAttention({x.shape[-1]}, {mha.n_heads})", x, *([context] if context is not None else []), **kwargs)
    return rules.call(mha, x, context, what=what, backward=backward, **kwargs), what


def test_mha_rejects_indivisible_d_model(attention):
    rules.expect_raises(ValueError, attention.MultiHeadAttention, 30, 4, what="MultiHeadAttention(30, 4)")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_mha_layout(attention, bias):
    what = f"MultiHeadAttention(32, 4, bias={bias})"
    mha = rules.call(attention.MultiHeadAttention, 32, 4, bias=bias, what=what)
    if getattr(mha, "n_heads", None) != 4:
        raise checks.Wrong(f"{what}.n_heads is {getattr(mha, 'n_heads', 'missing')}, expected 4")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer = getattr(mha, name, None)
        if not checks.is_instance(layer, nn.Linear):
            raise checks.Wrong(f"{what}.{name} is {checks.type_name(layer)}, expected nn.Linear(32, 32)")
        if (layer.in_features, layer.out_features, layer.bias is not None) != (32, 32, bias):
            raise checks.Wrong(f"{what}.{name} is {layer}, expected nn.Linear(32, 32, bias={bias})")
    n_params = sum(p.numel() for p in mha.parameters())
    expected = 4 * 32 * 32 + (4 * 32 if bias else 0)
    if n_params != expected:
        raise checks.Wrong(f"{what} has {n_params} parameters, expected {expected} (four projections and nothing else)")


@pytest.mark.parametrize("case", MHA_CASES)
def test_mha_matches_torch(attention, device, case):
    d_model, n_heads, bias, x, context, kwargs = mha_case(case, device)
    mha = make_mha(attention, d_model, n_heads, device, bias=bias)
    got, what = call_mha(mha, x, context, kwargs)
    want, _ = torch_mha(mha, x, context, **kwargs)
    baseline, _ = torch_mha(mha, x, context, **kwargs, dtype=torch.float32)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ["self", "cross_attention"])
def test_mha_heads_keep_their_own_values(attention, device, case):
    """With the query projection zeroed every score is 0, so each query averages its head's
    values whatever the scale: what is left is that each head reads and writes its own slice
    of the model dimension (heads split and merged with the transpose)."""
    d_model, n_heads, bias, x, context, kwargs = mha_case(case, device)
    mha = make_mha(attention, d_model, n_heads, device, bias=bias)
    zeros = torch.zeros(d_model, d_model, device=device)
    rules.call(harness.assign_parameters, mha, {"q_proj.weight": zeros, "q_proj.bias": zeros[0]})
    got, what = call_mha(mha, x, context, kwargs)
    what += " with q_proj zeroed (every query attends uniformly)"
    want, _ = torch_mha(mha, x, context, **kwargs)
    baseline, _ = torch_mha(mha, x, context, **kwargs, dtype=torch.float32)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ["causal", "cross_attention_padding"])
def test_mha_gradients_reach_parameters(attention, device, case):
    d_model, n_heads, bias, x, context, kwargs = mha_case(case, device)
    mha = make_mha(attention, d_model, n_heads, device, bias=bias)
    upstream = randn(*x.shape, seed=14, device=device)
    got, what = call_mha(mha, x, context, kwargs, backward=upstream)
    checks.expect_tensor(got, shape=x.shape, dtype=x.dtype, device=device, what=what)
    want, ref = torch_mha(mha, x, context, **kwargs)
    (want * golden(upstream)).sum().backward()
    base_out, base = torch_mha(mha, x, context, **kwargs, dtype=torch.float32)
    (base_out * upstream).sum().backward()

    def split(m):
        w = m.in_proj_weight.grad.chunk(3)
        b = m.in_proj_bias.grad.chunk(3)
        return {
            "q_proj.weight": w[0], "k_proj.weight": w[1], "v_proj.weight": w[2],
            "q_proj.bias": b[0], "k_proj.bias": b[1], "v_proj.bias": b[2],
            "out_proj.weight": m.out_proj.weight.grad, "out_proj.bias": m.out_proj.bias.grad,
        }  # fmt: skip

    want_grads, base_grads = split(ref), split(base)
    for name, p in mha.named_parameters():
        if p.grad is None:
            raise checks.Wrong(f"after backward through {what}, {name}.grad is None: no gradient reaches it")
        expect_close(p.grad, want_grads[name], what=f"{name}.grad after {what}", dtype=torch.float32, device=device, baseline=base_grads[name])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_mha_low_precision(attention, device, dtype):
    checks.need_dtype(dtype, device)
    d_model, n_heads, bias, x, context, kwargs = mha_case("cross_attention_padding", device)
    mha = make_mha(attention, d_model, n_heads, device, bias=bias, dtype=dtype)
    x, context = x.to(dtype), context.to(dtype)
    got, what = call_mha(mha, x, context, kwargs)
    want, _ = torch_mha(mha, x, context, **kwargs)
    baseline, _ = torch_mha(mha, x, context, **kwargs, dtype=dtype)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


def test_mha_no_loop_over_batch_or_heads(attention, device):
    def ops(batch, heads):
        mha = make_mha(attention, 16, heads, device)
        x = randn(batch, 5, 16, seed=15, device=device)
        return rules.count_ops(mha, x, is_causal=True)

    checks.expect_same_op_count(
        partial(ops, 2, 2), partial(ops, 5, 8), what="MultiHeadAttention.forward", small_desc="B=2, 2 heads", large_desc="B=5, 8 heads"
    )


def test_mha_speed(attention, reference_attention, device, record_property):
    mine = make_mha(attention, 256, 16, device)
    ref = make_mha(reference_attention, 256, 16, device)
    x = randn(8, 64, 256, seed=16, device=device)
    limit = TOPIC.speed[device.type]
    ratio = rules.speed_ratio(partial(mine, x, is_causal=True), partial(ref, x, is_causal=True), device=device, near=limit)
    record_property("speed_ratio", round(ratio, 3))
    checks.expect_fast_enough(ratio, limit, what="MultiHeadAttention(256, 16) on (8, 64, 256)", device=device)
