"""Grader for the gqa kata: repeat_kv, grouped_query_attention, GroupedQueryAttention.

Every value is checked against torch's own ops computed in float64:
torch.repeat_interleave for repeat_kv, F.scaled_dot_product_attention(..., enable_gqa=True)
with an explicit bottom-right causal mask for the attention, and the same with the
module's own weights for GroupedQueryAttention; gradients against torch's autograd (q, k,
v; x and every parameter); half precision against torch's unfused kernel in that dtype.
Every key/value head holds different numbers, so serving query head h from the wrong
key/value head (tiling heads 0, 1, 0, 1 instead of 0, 0, 1, 1) gives wrong values.
Work: no tensor as large as the keys repeated out to every query head (B·H·S·D
elements) on a decoding-shaped call, and no loop over heads or groups (op counts).
Rules (no fused attention, no repeat_interleave, inputs unmodified) on every call.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("gqa")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def gqa(impl):
    return impl.load("gqa")


@pytest.fixture(scope="module")
def reference_gqa(reference):
    return reference.load("gqa")


# ---------------------------------------------------------------- torch's reference


def bottom_right(t: int, s: int, device="cpu") -> torch.Tensor:
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)


def with_causal(mask, t, s, device):
    causal = bottom_right(t, s, device)
    if mask is None:
        return causal
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))


def torch_gqa(q, k, v, mask=None, *, is_causal=False, scale=None, math_only=False):
    """torch's attention under this kata's API: the bottom-right causal mask made explicit.
    math_only: torch's unfused kernel on repeated keys and values, in q's dtype (the error
    a plain implementation is bound to make, for half-precision tolerances)."""
    (B, H, T, _), S = q.shape, k.shape[-2]
    if is_causal:
        mask = with_causal(mask, T, S, q.device)
    if mask is not None:
        mask = mask.expand(B, H, T, S)
    if math_only:
        n_rep = H // k.shape[1]
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        return checks.unfused_attention(q, k, v, mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


# ---------------------------------------------------------------- inputs


def padding_mask(batch: int, s: int, device) -> torch.Tensor:
    """(B, 1, 1, S), True = real token; batch b has its last 2b keys padded; key 0 always real."""
    lengths = torch.tensor([max(1, s - 2 * b) for b in range(batch)])
    return (torch.arange(s)[None, :] < lengths[:, None])[:, None, None, :].to(device)


def random_bool_mask(*shape, seed, device):
    """A random bool mask with key 0 always allowed, so no row is fully masked."""
    m = randn(*shape, seed=seed, device="cpu") > -0.5
    m[..., 0] = True
    return m.to(device)


def qkv(B, H, H_kv, T, S, D, *, device, dtype=torch.float32, scale=1.0, seed=1):
    q = randn(B, H, T, D, seed=seed, device=device, dtype=dtype, scale=scale)
    k = randn(B, H_kv, S, D, seed=seed + 1, device=device, dtype=dtype, scale=scale)
    v = randn(B, H_kv, S, D, seed=seed + 2, device=device, dtype=dtype)
    return q, k, v


def gqa_case(name: str, device, dtype=torch.float32):
    """((q, k, v), kwargs) for one named case of grouped_query_attention."""
    base = qkv(2, 4, 2, 5, 5, 8, device=device, dtype=dtype)
    cases = {
        "gqa": (base, {}),
        "mqa": (qkv(2, 4, 1, 5, 5, 8, device=device, dtype=dtype), {}),
        "mha": (qkv(2, 3, 3, 5, 5, 8, device=device, dtype=dtype), {}),
        "groups_of_3": (qkv(1, 6, 2, 4, 4, 8, device=device, dtype=dtype), {}),
        "fewer_queries_than_keys": (qkv(2, 6, 3, 3, 7, 8, device=device, dtype=dtype), {}),
        "decoding_step": (qkv(2, 8, 2, 1, 9, 16, device=device, dtype=dtype), {}),
        "bool_padding_mask": (base, {"mask": padding_mask(2, 5, device)}),
        # Each query head has its own mask: the head dim of a mask indexes query heads.
        "per_head_bool_mask": (base, {"mask": random_bool_mask(2, 4, 5, 5, seed=4, device=device)}),
        "float_mask": (base, {"mask": randn(5, 5, seed=5, device=device, dtype=dtype)}),
        "per_head_float_mask": (base, {"mask": randn(4, 1, 5, seed=6, device=device, dtype=dtype)}),
        "causal": (base, {"is_causal": True}),
        "causal_fewer_queries": (qkv(2, 4, 2, 3, 8, 8, device=device, dtype=dtype), {"is_causal": True}),
        "causal_and_bool_mask": (base, {"mask": padding_mask(2, 5, device), "is_causal": True}),
        "explicit_scale": (base, {"scale": 0.3}),
        "large_magnitude": (qkv(2, 4, 2, 5, 5, 8, device=device, dtype=dtype, scale=30.0), {"is_causal": True}),
        "float32_mask": (base, {"mask": randn(2, 1, 5, 5, seed=7, device=device), "is_causal": True}),
        "non_contiguous": (
            tuple(randn(2, 5, h, 8, seed=s, device=device, dtype=dtype).transpose(1, 2) for s, h in ((1, 4), (2, 2), (3, 2))), {},
        ),
    }
    return cases[name]


GQA_CASES = ["gqa", "mqa", "mha", "groups_of_3", "fewer_queries_than_keys", "decoding_step", "bool_padding_mask",
             "per_head_bool_mask", "float_mask", "per_head_float_mask", "causal", "causal_fewer_queries",
             "causal_and_bool_mask", "explicit_scale", "large_magnitude", "non_contiguous"]  # fmt: skip


def call_gqa(gqa, q, k, v, kwargs, backward=None):
    what = describe_call("grouped_query_attention", q, k, v, **kwargs)
    return rules.call(gqa.grouped_query_attention, q, k, v, what=what, backward=backward, **kwargs), what


# ---------------------------------------------------------------- repeat_kv


REPEAT_CASES = {"n_rep=2": ((2, 2, 5, 4), 2), "n_rep=3": ((1, 3, 4, 8), 3), "mqa_n_rep=4": ((2, 1, 3, 4), 4), "n_rep=1": ((2, 2, 3, 4), 1)}


@pytest.mark.parametrize("case", list(REPEAT_CASES))
def test_repeat_kv_matches_torch(gqa, device, case):
    """Every head holds different values: head h of the output must be x's head h // n_rep."""
    shape, n_rep = REPEAT_CASES[case]
    x = randn(*shape, seed=3, device=device)
    what = describe_call("repeat_kv", x, n_rep)
    got = rules.call(gqa.repeat_kv, x, n_rep, what=what)
    want = golden(x).repeat_interleave(n_rep, dim=1)
    checks.expect_tensor(got, shape=want.shape, dtype=x.dtype, device=device, what=what)
    if not torch.equal(golden(got), want):
        served = [next((j for j in range(shape[1]) if torch.equal(golden(got)[:, h], golden(x)[:, j])), None) for h in range(want.shape[1])]
        raise checks.Wrong(
            f"{what}: output head h holds x's head {served} (None: no head of x); expected "
            f"{[h // n_rep for h in range(want.shape[1])]}: key/value head j serves query heads j*n_rep .. (j+1)*n_rep - 1"
        )


# ---------------------------------------------------------------- grouped_query_attention


@pytest.mark.parametrize("case", GQA_CASES)
def test_matches_torch(gqa, device, case):
    (q, k, v), kwargs = gqa_case(case, device)
    got, what = call_gqa(gqa, q, k, v, kwargs)
    want = torch_gqa(golden(q), golden(k), golden(v), golden(kwargs.get("mask")), **{k_: a for k_, a in kwargs.items() if k_ != "mask"})
    baseline = torch_gqa(q, k, v, kwargs.get("mask"), **{k_: a for k_, a in kwargs.items() if k_ != "mask"})
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


def test_rejects_indivisible_heads(gqa, device):
    q, k, v = qkv(1, 6, 4, 3, 3, 8, device=device)
    rules.expect_raises(ValueError, gqa.grouped_query_attention, q, k, v, what=describe_call("grouped_query_attention", q, k, v))


LOW_PRECISION_CASES = ["gqa", "causal_and_bool_mask", "decoding_step", "float32_mask"]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
def test_low_precision(gqa, device, case, dtype):
    """The output is in q's dtype, even when a float32 mask would promote the scores."""
    checks.need_dtype(dtype, device)
    (q, k, v), kwargs = gqa_case(case, device, dtype)
    got, what = call_gqa(gqa, q, k, v, kwargs)
    rest = {k_: a for k_, a in kwargs.items() if k_ != "mask"}
    want = torch_gqa(golden(q), golden(k), golden(v), golden(kwargs.get("mask")), **rest)
    mask = kwargs.get("mask")
    low_mask = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
    baseline = torch_gqa(q, k, v, low_mask, **rest, math_only=True)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ["causal_and_bool_mask", "fewer_queries_than_keys", "mqa", "per_head_float_mask"])
def test_gradients_match_torch(gqa, device, case):
    """Gradients of q, k and v: a key/value head's gradient sums over the query heads it serves."""
    (q, k, v), kwargs = gqa_case(case, device)
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    upstream = randn(*q.shape, seed=9, device=device)
    out, what = call_gqa(gqa, q, k, v, kwargs, backward=upstream)
    checks.expect_tensor(out, shape=q.shape, dtype=q.dtype, device=device, what=what)
    rest = {k_: a for k_, a in kwargs.items() if k_ != "mask"}
    gq, gk, gv = (golden(t) for t in (q, k, v))
    want = torch.autograd.grad(torch_gqa(gq, gk, gv, golden(kwargs.get("mask")), **rest), (gq, gk, gv), golden(upstream))
    bq, bk, bv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    base = torch.autograd.grad(torch_gqa(bq, bk, bv, kwargs.get("mask"), **rest), (bq, bk, bv), upstream)
    for name, g, w, b in zip("qkv", (q.grad, k.grad, v.grad), want, base):
        if g is None:
            raise checks.Wrong(f"{what}: no gradient reaches {name}; is something detached?")
        expect_close(g, w, what=f"the gradient of {name} through {what}", dtype=torch.float32, device=device, baseline=b)


# ---------------------------------------------------------------- work: nothing repeated, no loops


DECODE = {"B": 2, "H": 8, "T": 1, "S": 64, "D": 16}


@pytest.mark.parametrize("case", ["gqa", "mqa", "gqa_padding_mask_causal"])
def test_no_materialised_kv(gqa, device, case):
    """One decoding step (T = 1) against 64 cached positions, H = 8 query heads and 2 (or 1)
    key/value heads: its scores are B·H·S = 1024 numbers, the keys repeated out to every
    query head B·H·S·D = 16384. Nothing that large may be made: that copy, repeated every
    step over the whole cache, is the memory traffic GQA exists to save."""
    B, H, T, S, D = DECODE.values()
    H_kv = 1 if case == "mqa" else 2
    q, k, v = qkv(B, H, H_kv, T, S, D, device=device, seed=20)
    kwargs = {"mask": padding_mask(B, S, device), "is_causal": True} if case.endswith("causal") else {}
    what = describe_call("grouped_query_attention", q, k, v, **kwargs)
    ops = rules.record_ops(gqa.grouped_query_attention, q, k, v, **kwargs)
    limit = B * H * S * D
    big = [(op.name, made.shape) for op in ops for made in op.new_tensors() if torch.Size(made.shape).numel() >= limit]
    if big:
        op, shape = big[0]
        raise checks.Wrong(
            f"{what} made a tensor of shape {tuple(shape)} with {op}: {torch.Size(shape).numel()} elements, as many as "
            f"the keys or values repeated out to all {H} query heads (B·H·S·D = {limit}). Attend each group of query heads "
            "to its shared key/value head without copying it: fold the group into the query rows, "
            "(B, H, T, D) -> (B, H_kv, G·T, D). (torch.matmul copies an operand whose batch dims it must broadcast.)"
        )


def gqa_ops(gqa, H, H_kv, device):
    q, k, v = qkv(2, H, H_kv, 5, 5, 8, device=device, seed=30)
    return rules.count_ops(gqa.grouped_query_attention, q, k, v, mask=padding_mask(2, 5, device), is_causal=True)


@pytest.mark.parametrize("grow", ["more_groups", "larger_groups"])
def test_no_loop_over_heads(gqa, device, grow):
    """The same aten ops for H = 4, H_kv = 2 as for H = 8 with H_kv = 4 (more groups) or
    H_kv = 2 (larger groups): no Python loop over key/value heads or query heads."""
    H_kv = 4 if grow == "more_groups" else 2
    checks.expect_same_op_count(
        partial(gqa_ops, gqa, 4, 2, device), partial(gqa_ops, gqa, 8, H_kv, device),
        what="grouped_query_attention", small_desc="H=4, H_kv=2", large_desc=f"H=8, H_kv={H_kv}",
    )  # fmt: skip


def test_speed(gqa, reference_gqa, device, record_property):
    """One decoding step of 32 query heads sharing 4 key/value heads of 64 dims, against 512
    cached positions, B = 4: within the limit of the reference's time.
    Copying the cache out to every query head, or a loop over query heads, is far slower."""
    q, k, v = qkv(4, 32, 4, 1, 512, 64, device=device, seed=40)
    mask = padding_mask(4, 512, device)
    limit = TOPIC.speed[device.type]
    ratio = rules.speed_ratio(
        partial(gqa.grouped_query_attention, q, k, v, mask=mask),
        partial(reference_gqa.grouped_query_attention, q, k, v, mask=mask),
        device=device, near=limit,
    )  # fmt: skip
    record_property("speed_ratio", round(ratio, 3))
    checks.expect_fast_enough(ratio, limit, what="grouped_query_attention, decoding (4, 32, 1, 64) over (4, 4, 512, 64)", device=device)


# ---------------------------------------------------------------- GroupedQueryAttention


def make_module(gqa, d_model, n_heads, n_kv_heads, device, *, bias=False, dtype=torch.float32):
    """The learner's module with seeded weights, so every run grades the same numbers."""
    what = f"GroupedQueryAttention({d_model}, {n_heads}, {n_kv_heads}, bias={bias})"
    m = rules.call(gqa.GroupedQueryAttention, d_model, n_heads, n_kv_heads, bias=bias, what=what)
    seeded = {name: randn(*p.shape, seed=100 + i, scale=d_model**-0.5, device="cpu") for i, (name, p) in enumerate(sorted(m.named_parameters()))}
    rules.call(harness.assign_parameters, m, seeded)
    return m.to(device=device, dtype=dtype), what


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def module_weights(m, what, d_model, n_heads, n_kv_heads) -> dict:
    """The module's projection weights (and biases), read in one request, of the shapes
    the kata asks for (torch's reference is computed from them)."""
    w = {name: t.detach() for name, t in m.state_dict().items()}
    kv_width = n_kv_heads * (d_model // n_heads)
    shapes = {"q_proj": (d_model, d_model), "k_proj": (kv_width, d_model), "v_proj": (kv_width, d_model), "o_proj": (d_model, d_model)}
    for name, shape in shapes.items():
        if f"{name}.weight" not in w:
            raise checks.Wrong(f"{what} has no {name}: expected q_proj, k_proj, v_proj and o_proj (nn.Linear)")
        if tuple(w[f"{name}.weight"].shape) != shape:
            raise checks.Wrong(f"{what}.{name}.weight has shape {tuple(w[f'{name}.weight'].shape)}, expected {shape} "
                               f"(k_proj and v_proj map d_model to n_kv_heads * head_dim = {kv_width})")  # fmt: skip
    return w


def torch_module(w: dict, n_heads, n_kv_heads, x, *, mask=None, is_causal=False, math_only=False):
    """The module computed by torch from the weights `w` (any dtype; float64 for the golden);
    math_only: torch's unfused attention kernel, the baseline of half-precision tolerances."""
    B, T, d_model = x.shape
    hd = d_model // n_heads

    def proj(name, inp):
        return F.linear(inp, w[f"{name}.weight"], w.get(f"{name}.bias"))

    q = proj("q_proj", x).view(B, T, n_heads, hd).transpose(1, 2)
    k = proj("k_proj", x).view(B, T, n_kv_heads, hd).transpose(1, 2)
    v = proj("v_proj", x).view(B, T, n_kv_heads, hd).transpose(1, 2)
    y = torch_gqa(q, k, v, mask, is_causal=is_causal, math_only=math_only)
    return proj("o_proj", y.transpose(1, 2).reshape(B, T, d_model))


MODULE_CASES = {
    "gqa": (32, 8, 2, False, {}),
    "mqa": (32, 4, 1, False, {}),
    "mha": (32, 4, 4, False, {}),
    "causal": (32, 8, 2, False, {"is_causal": True}),
    "padding_mask": (32, 8, 4, False, {"mask": "padding"}),
    "float_mask": (32, 4, 2, False, {"mask": "float"}),
    "bias_causal": (32, 4, 2, True, {"is_causal": True}),
}


def module_case(name, device):
    d_model, h, h_kv, bias, kwargs = MODULE_CASES[name]
    x = randn(2, 6, d_model, seed=10, device=device)
    kwargs = dict(kwargs)
    if kwargs.get("mask") == "padding":
        kwargs["mask"] = padding_mask(2, 6, device)
    elif kwargs.get("mask") == "float":
        kwargs["mask"] = randn(6, 6, seed=12, device=device)
    return d_model, h, h_kv, bias, x, kwargs


LAYOUT_CASES = [(32, 8, 2, False), (32, 4, 1, True), (24, 4, 4, False)]


@pytest.mark.parametrize("d_model, n_heads, n_kv_heads, bias", LAYOUT_CASES, ids=["gqa", "mqa_bias", "mha"])
def test_module_layout(gqa, d_model, n_heads, n_kv_heads, bias):
    """Attributes and parameter count: k_proj and v_proj are n_kv_heads · head_dim wide."""
    what = f"GroupedQueryAttention({d_model}, {n_heads}, {n_kv_heads}, bias={bias})"
    m = rules.call(gqa.GroupedQueryAttention, d_model, n_heads, n_kv_heads, bias=bias, what=what)
    for attr, want in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        got = getattr(m, attr, None)
        if got != want:
            raise checks.Wrong(f"{what}.{attr} is {got}, expected {want}")
    kv_width = n_kv_heads * (d_model // n_heads)
    shapes = {"q_proj": (d_model, d_model), "k_proj": (d_model, kv_width), "v_proj": (d_model, kv_width), "o_proj": (d_model, d_model)}
    for name, (fan_in, fan_out) in shapes.items():
        layer = getattr(m, name, None)
        if not checks.is_instance(layer, nn.Linear):
            raise checks.Wrong(f"{what}.{name} is {checks.type_name(layer)}, expected nn.Linear({fan_in}, {fan_out}, bias={bias})")
        if (layer.in_features, layer.out_features, layer.bias is not None) != (fan_in, fan_out, bias):
            raise checks.Wrong(f"{what}.{name} is {layer}, expected nn.Linear({fan_in}, {fan_out}, bias={bias})")
    n_params = sum(p.numel() for p in m.parameters())
    expected = 2 * d_model * d_model + 2 * d_model * kv_width + ((2 * d_model + 2 * kv_width) if bias else 0)
    if n_params != expected:
        raise checks.Wrong(f"{what} has {n_params} parameters, expected {expected} (the four projections and nothing else)")


@pytest.mark.parametrize("d_model, n_heads, n_kv_heads", [(30, 4, 2), (32, 8, 3)], ids=["d_model%n_heads", "n_heads%n_kv_heads"])
def test_module_rejects_bad_heads(gqa, d_model, n_heads, n_kv_heads):
    what = f"GroupedQueryAttention({d_model}, {n_heads}, {n_kv_heads})"
    rules.expect_raises(ValueError, gqa.GroupedQueryAttention, d_model, n_heads, n_kv_heads, what=what)


def call_module(m, x, kwargs, name, backward=None):
    what = describe_call(name, x, **kwargs)
    return rules.call(m, x, what=what, backward=backward, **kwargs), what


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_module_matches_torch(gqa, device, case):
    d_model, h, h_kv, bias, x, kwargs = module_case(case, device)
    m, name = make_module(gqa, d_model, h, h_kv, device, bias=bias)
    got, what = call_module(m, x, kwargs, name)
    w = module_weights(m, name, d_model, h, h_kv)
    want = torch_module({n: golden(t) for n, t in w.items()}, h, h_kv, golden(x), **{k: golden(a) for k, a in kwargs.items()})
    baseline = torch_module(w, h, h_kv, x, **kwargs)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ["causal", "padding_mask", "bias_causal"])
def test_module_gradients(gqa, device, case):
    """Gradients of x and of every parameter, as an optimiser would see them."""
    d_model, h, h_kv, bias, x, kwargs = module_case(case, device)
    m, name = make_module(gqa, d_model, h, h_kv, device, bias=bias)
    w = module_weights(m, name, d_model, h, h_kv)
    x = x.clone().requires_grad_()
    upstream = randn(*x.shape, seed=14, device=device)
    got, what = call_module(m, x, kwargs, name, backward=upstream)
    checks.expect_tensor(got, shape=x.shape, dtype=x.dtype, device=device, what=what)
    grads = {n: p.grad for n, p in m.named_parameters()}
    gold = {n: golden(t).requires_grad_() for n, t in w.items()}
    gx = golden(x).requires_grad_()
    out = torch_module(gold, h, h_kv, gx, **{k: golden(a) for k, a in kwargs.items()})
    want = dict(zip(["x", *gold], torch.autograd.grad(out, [gx, *gold.values()], golden(upstream))))
    base_w = {n: t.clone().requires_grad_() for n, t in w.items()}
    bx = x.detach().clone().requires_grad_()
    base = dict(zip(["x", *base_w], torch.autograd.grad(torch_module(base_w, h, h_kv, bx, **kwargs), [bx, *base_w.values()], upstream)))
    if x.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches x")
    expect_close(x.grad, want["x"], what=f"x.grad after {what}", dtype=torch.float32, device=device, baseline=base["x"])
    for n in gold:
        if grads.get(n) is None:
            raise checks.Wrong(f"after backward through {what}, {n}.grad is None: no gradient reaches it (detached?)")
        expect_close(grads[n], want[n], what=f"{n}.grad after {what}", dtype=torch.float32, device=device, baseline=base[n])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_module_low_precision(gqa, device, dtype):
    checks.need_dtype(dtype, device)
    d_model, h, h_kv, bias, x, kwargs = module_case("padding_mask", device)
    m, name = make_module(gqa, d_model, h, h_kv, device, bias=bias, dtype=dtype)
    x = x.to(dtype)
    got, what = call_module(m, x, kwargs, f"{name}.to({str(dtype).removeprefix('torch.')})")
    w = module_weights(m, name, d_model, h, h_kv)
    want = torch_module({n: golden(t) for n, t in w.items()}, h, h_kv, golden(x), **kwargs)
    baseline = torch_module(w, h, h_kv, x, **kwargs, math_only=True)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)
