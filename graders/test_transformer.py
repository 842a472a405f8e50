"""Grader for the transformer kata: EncoderBlock, SwiGLU, DecoderBlock and TinyGPT.

EncoderBlock is compared with torch's own nn.TransformerEncoderLayer given the same
weights (both norm placements, both activations, with and without a padding mask), the
others with a float64 reference written here from the module's own state_dict (F.rms_norm,
F.scaled_dot_product_attention with is_causal, F.silu, F.embedding), computed in float64 on
the CPU; gradients of every parameter against autograd; half precision against torch's own
error in that dtype. Properties are checked directly as well: causality (changing later
tokens leaves earlier outputs unchanged), padding (changing padded tokens changes no real
position), weight tying (one Parameter, one storage, counted once) and train == eval (no
dropout). Rules (torch's attention modules and fused encoder layer are forbidden, inputs
unmodified) apply to every call. There is no speed check: the lesson is the wiring.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("transformer")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def tf(impl):
    return impl.load("transformer")


# ---------------------------------------------------------------- building the learner's modules


def seed_parameters(module, seed: int) -> None:
    """Seeded values for every parameter, so every run grades the same numbers: norm weights
    near 1, biases small, embeddings N(0, 0.5^2), weight matrices scaled by 1/sqrt(fan_in).
    Each parameter gets its own values, so swapping two of them shows."""
    seeded = {}
    for i, (name, p) in enumerate(sorted(module.named_parameters())):
        s = seed + i
        if "norm" in name:
            seeded[name] = 1 + randn(*p.shape, seed=s, device="cpu", scale=0.2)
        elif name.endswith("bias"):
            seeded[name] = randn(*p.shape, seed=s, device="cpu", scale=0.1)
        elif "emb" in name:
            seeded[name] = randn(*p.shape, seed=s, device="cpu", scale=0.5)
        else:
            seeded[name] = randn(*p.shape, seed=s, device="cpu", scale=p.shape[-1] ** -0.5)
    rules.call(harness.assign_parameters, module, seeded)


def build(tf, cls: str, *args, device, dtype=torch.float32, seed=100, **kwargs):
    what = describe_call(cls, *args, **kwargs)
    module = rules.call(getattr(tf, cls), *args, what=what, **kwargs)
    seed_parameters(module, seed)
    return module.to(device=device, dtype=dtype), what


def weights(module, shapes: dict) -> dict:
    """The module's state_dict, read in one request, with the entries the reference needs
    checked first (a missing or misshapen one is a wrong layout, not a grader crash)."""
    sd = {name: t.detach() for name, t in module.state_dict().items()}
    for name, shape in shapes.items():
        if name not in sd:
            raise checks.Wrong(f"{checks.type_name(module)}.state_dict() has no {name}; expected one of shape {shape}")
        if tuple(sd[name].shape) != tuple(shape):
            raise checks.Wrong(f"{checks.type_name(module)}'s {name} has shape {tuple(sd[name].shape)}, expected {tuple(shape)}")
    return sd


def encoder_shapes(d: int, f: int) -> dict:
    shapes = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes |= {f"{name}.weight": (d, d), f"{name}.bias": (d,)}
    shapes |= {"linear1.weight": (f, d), "linear1.bias": (f,), "linear2.weight": (d, f), "linear2.bias": (d,)}
    for name in ("norm1", "norm2"):
        shapes |= {f"{name}.weight": (d,), f"{name}.bias": (d,)}
    return shapes


def swiglu_shapes(prefix: str, d: int, hidden: int) -> dict:
    return {f"{prefix}gate_proj.weight": (hidden, d), f"{prefix}up_proj.weight": (hidden, d), f"{prefix}down_proj.weight": (d, hidden)}


def decoder_shapes(prefix: str, d: int, hidden: int) -> dict:
    shapes = {f"{prefix}attn_norm.weight": (d,), f"{prefix}mlp_norm.weight": (d,)}
    shapes |= {f"{prefix}{n}_proj.weight": (d, d) for n in "qkvo"}
    return shapes | swiglu_shapes(prefix + "mlp.", d, hidden)


def golden_params(sd: dict, names, *, dtype=torch.float64, device="cpu") -> dict:
    """Leaf copies of the state_dict entries in `names`, requiring grad, for the reference."""
    return {n: sd[n].detach().to(device=device, dtype=dtype).requires_grad_() for n in names}


def expect_grads(module, want: dict, base: dict, *, what: str, device) -> None:
    """Every parameter's .grad (read after a backward in the executor) equals the reference's."""
    got = dict(module.named_parameters())
    for name in sorted(want):
        p = got.get(name)
        if p is None:
            raise checks.Wrong(f"{checks.type_name(module)} has no parameter {name}")
        if p.grad is None:
            raise checks.Wrong(f"after backward through {what}, {name}.grad is None: no gradient reaches it")
        expect_close(p.grad, want[name].grad, what=f"{name}.grad after {what}", dtype=p.dtype, device=device, baseline=base[name].grad)


# ---------------------------------------------------------------- references


def torch_encoder(sd: dict, x, key_padding_mask, *, n_heads, d_ff, norm_first, activation, dtype=torch.float64, device="cpu"):
    """nn.TransformerEncoderLayer with the learner's weights, in `dtype` (training mode with
    grad enabled: torch's slow path, not the fused fast path)."""
    d_model = x.shape[-1]
    ref = nn.TransformerEncoderLayer(
        d_model, n_heads, d_ff, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).to(device=device, dtype=dtype)  # fmt: skip
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([sd["q_proj.weight"], sd["k_proj.weight"], sd["v_proj.weight"]]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([sd["q_proj.bias"], sd["k_proj.bias"], sd["v_proj.bias"]]))
        for mine, theirs in [("out_proj", "self_attn.out_proj"), ("linear1", "linear1"), ("linear2", "linear2"), ("norm1", "norm1"), ("norm2", "norm2")]:
            ref.get_submodule(theirs).weight.copy_(sd[f"{mine}.weight"])
            ref.get_submodule(theirs).bias.copy_(sd[f"{mine}.bias"])
    x = x.detach().to(device=device, dtype=dtype).requires_grad_(x.requires_grad)
    mask = None if key_padding_mask is None else key_padding_mask.to(device)
    return ref(x, src_key_padding_mask=mask), ref


ENCODER_GRAD_NAMES = {
    "q_proj": ("self_attn.in_proj", 0), "k_proj": ("self_attn.in_proj", 1), "v_proj": ("self_attn.in_proj", 2),
    "out_proj": ("self_attn.out_proj", None), "linear1": ("linear1", None), "linear2": ("linear2", None),
    "norm1": ("norm1", None), "norm2": ("norm2", None),
}  # fmt: skip


def encoder_grads(ref) -> dict:
    """The reference layer's parameter gradients under this kata's names, as objects with .grad."""
    out = {}
    for mine, (theirs, chunk) in ENCODER_GRAD_NAMES.items():
        for kind in ("weight", "bias"):
            if chunk is None:
                g = ref.get_parameter(f"{theirs}.{kind}").grad
            else:
                g = ref.get_parameter(f"{theirs}_{kind}").grad.chunk(3)[chunk]
            out[f"{mine}.{kind}"] = SimpleNamespace(grad=g)
    return out


def ref_attention(x, wq, wk, wv, wo, n_heads):
    B, T, D = x.shape

    def heads(t):
        return t.view(B, T, n_heads, D // n_heads).transpose(1, 2)  # (B, H, T, D/H)

    out = F.scaled_dot_product_attention(heads(F.linear(x, wq)), heads(F.linear(x, wk)), heads(F.linear(x, wv)), is_causal=True)
    return F.linear(out.transpose(1, 2).reshape(B, T, D), wo)


def ref_swiglu(p: dict, prefix: str, x):
    return F.linear(F.silu(F.linear(x, p[prefix + "gate_proj.weight"])) * F.linear(x, p[prefix + "up_proj.weight"]), p[prefix + "down_proj.weight"])


def ref_decoder(p: dict, prefix: str, x, n_heads: int, eps: float):
    """The LLaMA-style pre-norm block, from the parameters `p` (names as in the learner's state_dict)."""
    D = x.shape[-1]
    h = F.rms_norm(x, (D,), p[prefix + "attn_norm.weight"], eps)
    x = x + ref_attention(h, *(p[f"{prefix}{n}_proj.weight"] for n in "qkvo"), n_heads)
    h = F.rms_norm(x, (D,), p[prefix + "mlp_norm.weight"], eps)
    return x + ref_swiglu(p, prefix + "mlp.", h)


def ref_gpt(p: dict, ids, n_heads: int, n_layers: int):
    T = ids.shape[1]
    x = F.embedding(ids, p["tok_emb.weight"]) + p["pos_emb.weight"][:T]
    for i in range(n_layers):
        x = ref_decoder(p, f"blocks.{i}.", x, n_heads, 1e-6)
    x = F.rms_norm(x, (x.shape[-1],), p["norm.weight"], 1e-6)
    return F.linear(x, p["tok_emb.weight"])  # the tied head


def decoder_names(prefix: str) -> list[str]:
    return [prefix + n for n in ("attn_norm.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                 "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")]  # fmt: skip


def gpt_names(n_layers: int) -> list[str]:
    names = ["tok_emb.weight", "pos_emb.weight", "norm.weight"]
    for i in range(n_layers):
        names += decoder_names(f"blocks.{i}.")
    return names


# ---------------------------------------------------------------- layout helpers


def expect_linear(module, name: str, d_in: int, d_out: int, bias: bool, what: str) -> None:
    layer = getattr(module, name, None)
    if not checks.is_instance(layer, nn.Linear):
        raise checks.Wrong(f"{what}.{name} is {checks.type_name(layer)}, expected nn.Linear({d_in}, {d_out}, bias={bias})")
    if (layer.in_features, layer.out_features, layer.bias is not None) != (d_in, d_out, bias):
        raise checks.Wrong(f"{what}.{name} is {layer}, expected nn.Linear({d_in}, {d_out}, bias={bias})")


def expect_norm(module, name: str, cls: type, d: int, what: str, eps: float | None = None) -> None:
    layer = getattr(module, name, None)
    if not checks.is_instance(layer, cls):
        raise checks.Wrong(f"{what}.{name} is {checks.type_name(layer)}, expected nn.{cls.__name__}({d})")
    if tuple(layer.normalized_shape) != (d,):
        raise checks.Wrong(f"{what}.{name} normalises over {tuple(layer.normalized_shape)}, expected ({d},)")
    if eps is not None and layer.eps != eps:
        raise checks.Wrong(f"{what}.{name}.eps is {layer.eps}, expected {eps:g} (pass eps= to nn.RMSNorm: its default is not 1e-6)")


def expect_param_count(module, expected: int, what: str, detail: str) -> None:
    n = sum(p.numel() for p in module.parameters())
    if n != expected:
        raise checks.Wrong(f"{what} has {n} parameters, expected {expected} ({detail})")


# ---------------------------------------------------------------- EncoderBlock

D_MODEL, HEADS, D_FF = 32, 4, 48


def padding(lengths, t, device):
    """(B, T) bool, True = padding: row b has lengths[b] real tokens, then padding."""
    return (torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]).to(device)


# name: (norm_first, activation, n_heads, x scale, real lengths or None for no mask)
ENCODER_CASES = {
    "post_norm_relu": (False, "relu", HEADS, 1.0, None),
    "pre_norm_relu": (True, "relu", HEADS, 1.0, None),
    "post_norm_gelu": (False, "gelu", HEADS, 1.0, None),
    "pre_norm_gelu": (True, "gelu", 2, 1.0, None),
    "post_norm_padding": (False, "relu", HEADS, 1.0, [7, 3, 1]),
    "pre_norm_padding": (True, "gelu", HEADS, 1.0, [5, 7, 2]),
    "mask_without_padding": (False, "gelu", HEADS, 1.0, [7, 7, 7]),
    "large_magnitude": (True, "relu", 1, 20.0, [6, 7, 4]),
}


def encoder_case(tf, name, device, dtype=torch.float32):
    norm_first, activation, heads, scale, lengths = ENCODER_CASES[name]
    block, what = build(tf, "EncoderBlock", D_MODEL, heads, D_FF, norm_first=norm_first, activation=activation, device=device, dtype=dtype)
    x = randn(3, 7, D_MODEL, seed=1, device=device, dtype=dtype, scale=scale)
    mask = None if lengths is None else padding(lengths, 7, device)
    kwargs = dict(n_heads=heads, d_ff=D_FF, norm_first=norm_first, activation=activation)
    return block, what, x, mask, kwargs


def call_encoder(block, what, x, mask, backward=None):
    call = describe_call(f"{what}.forward", x, key_padding_mask=mask)
    return rules.call(block, x, key_padding_mask=mask, what=call, backward=backward), call


def test_encoder_layout(tf):
    what = f"EncoderBlock({D_MODEL}, {HEADS}, {D_FF}, norm_first=True, activation='gelu')"
    block = rules.call(tf.EncoderBlock, D_MODEL, HEADS, D_FF, norm_first=True, activation="gelu", what=what)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        expect_linear(block, name, D_MODEL, D_MODEL, True, what)
    expect_linear(block, "linear1", D_MODEL, D_FF, True, what)
    expect_linear(block, "linear2", D_FF, D_MODEL, True, what)
    expect_norm(block, "norm1", nn.LayerNorm, D_MODEL, what)
    expect_norm(block, "norm2", nn.LayerNorm, D_MODEL, what)
    d, f = D_MODEL, D_FF
    expect_param_count(block, 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d, what, "four projections, two linears, two LayerNorms")


@pytest.mark.parametrize("args, kwargs", [((30, 4, 48), {}), ((32, 4, 48), {"activation": "silu"})], ids=["indivisible_d_model", "unknown_activation"])
def test_encoder_rejects_bad_arguments(tf, args, kwargs):
    rules.expect_raises(ValueError, tf.EncoderBlock, *args, what=describe_call("EncoderBlock", *args, **kwargs), **kwargs)


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_encoder_matches_torch(tf, device, case):
    block, what, x, mask, kwargs = encoder_case(tf, case, device)
    got, call = call_encoder(block, what, x, mask)
    sd = weights(block, encoder_shapes(D_MODEL, D_FF))
    want, _ = torch_encoder(sd, x, mask, **kwargs)
    baseline, _ = torch_encoder(sd, x, mask, **kwargs, dtype=torch.float32, device=device)
    expect_close(got, want, what=call, dtype=torch.float32, device=device, baseline=baseline)


@pytest.mark.parametrize("case", ["post_norm_padding", "pre_norm_padding"])
def test_encoder_gradients(tf, device, case):
    block, what, x, mask, kwargs = encoder_case(tf, case, device)
    x = x.detach().clone().requires_grad_()
    upstream = randn(*x.shape, seed=2, device=device)
    got, call = call_encoder(block, what, x, mask, backward=upstream)
    checks.expect_tensor(got, shape=x.shape, dtype=x.dtype, device=device, what=call)
    sd = weights(block, encoder_shapes(D_MODEL, D_FF))
    want, ref = torch_encoder(sd, x, mask, **kwargs)
    want.backward(golden(upstream))
    base, base_ref = torch_encoder(sd, x, mask, **kwargs, dtype=torch.float32, device=device)
    base.backward(upstream)
    expect_grads(block, encoder_grads(ref), encoder_grads(base_ref), what=call, device=device)
    if x.grad is None:
        raise checks.Wrong(f"after backward through {call}, x.grad is None: is the input detached?")


@pytest.mark.parametrize("case", ["post_norm_padding", "pre_norm_padding"])
def test_encoder_ignores_padded_tokens(tf, device, case):
    """Changing what sits at padded positions changes no real position's output."""
    block, what, x, mask, _ = encoder_case(tf, case, device)
    other = torch.where(mask[..., None], randn(*x.shape, seed=3, device=device, scale=5.0), x)
    first, call = call_encoder(block, what, x, mask)
    second, _ = call_encoder(block, what, other, mask)
    real = ~mask.cpu()
    for b in range(x.shape[0]):
        expect_close(
            second[b][real[b]], golden(first[b][real[b]]), device=device, dtype=torch.float32,
            what=f"{call} for sequence {b}'s real tokens after its padded tokens were changed",
        )  # fmt: skip


def zero_parameters(module, names) -> None:
    rules.call(harness.assign_parameters, module, {n: torch.zeros(p.shape) for n, p in module.named_parameters() if n in names})


def test_encoder_padded_queries_see_real_tokens(tf, device):
    """Padding masks keys, not queries: a padded position's query still attends to the
    real keys (as in torch's layer), so changing the real tokens changes its output."""
    block, what, x, mask, _ = encoder_case(tf, "post_norm_padding", device)
    other = torch.where(mask[..., None], x, randn(*x.shape, seed=12, device=device, scale=3.0))
    first, call = call_encoder(block, what, x, mask)
    second, _ = call_encoder(block, what, other, mask)
    pad = mask.cpu()
    moved = (second - first).abs().amax(dim=-1)[pad]  # one figure per padded position
    if (moved < 1e-4).any():
        raise checks.Wrong(
            f"{call}: changing the real tokens left a padded position's output unchanged: is the mask applied to "
            "the queries (B, 1, T, 1) instead of the keys (B, 1, 1, T)?"
        )


def test_encoder_pre_norm_passes_the_residual_through(tf, device):
    """Pre-norm: x + sublayer(norm(x)). With both sublayers' last projections zeroed (and
    the norms' biases), each sublayer adds zero, so the block is the identity: the residual
    stream itself is never normalised. Post-norm would normalise it."""
    block, what = build(tf, "EncoderBlock", D_MODEL, HEADS, D_FF, norm_first=True, activation="gelu", device=device)
    zero_parameters(block, {"out_proj.weight", "out_proj.bias", "linear2.weight", "linear2.bias", "norm1.bias", "norm2.bias"})
    x = randn(2, 5, D_MODEL, seed=11, device=device, scale=3.0)
    got, call = call_encoder(block, what, x, None)
    expect_close(got, golden(x), device=device, dtype=torch.float32,
                 what=f"{call} with out_proj, linear2 and the norms' biases zeroed (must return x: the residual is not normalised)")  # fmt: skip


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_encoder_low_precision(tf, device, dtype):
    checks.need_dtype(dtype, device)
    block, what, x, mask, kwargs = encoder_case(tf, "pre_norm_padding", device, dtype)
    got, call = call_encoder(block, what, x, mask)
    sd = weights(block, encoder_shapes(D_MODEL, D_FF))
    want, _ = torch_encoder(sd, x, mask, **kwargs)
    baseline, _ = torch_encoder(sd, x, mask, **kwargs, dtype=dtype, device=device)
    expect_close(got, want, what=call, dtype=dtype, device=device, baseline=baseline)


# ---------------------------------------------------------------- SwiGLU


def test_swiglu_layout(tf):
    what = "SwiGLU(16, 40)"
    mlp = rules.call(tf.SwiGLU, 16, 40, what=what)
    expect_linear(mlp, "gate_proj", 16, 40, False, what)
    expect_linear(mlp, "up_proj", 16, 40, False, what)
    expect_linear(mlp, "down_proj", 40, 16, False, what)
    expect_param_count(mlp, 3 * 16 * 40, what, "three projections without bias")


@pytest.mark.parametrize("shape", [(2, 5, 16), (7, 16)], ids=["3d", "2d"])
def test_swiglu_matches_reference(tf, device, shape):
    mlp, what = build(tf, "SwiGLU", 16, 40, device=device)
    x = randn(*shape, seed=4, device=device, scale=2.0).requires_grad_()
    upstream = randn(*shape, seed=5, device=device)
    call = describe_call(what, x)
    got = rules.call(mlp, x, what=call, backward=upstream)
    sd = weights(mlp, swiglu_shapes("", 16, 40))
    names = ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
    gold, base = golden_params(sd, names), golden_params(sd, names, dtype=torch.float32, device=device)
    want = ref_swiglu(gold, "", golden(x))
    baseline = ref_swiglu(base, "", x.detach())
    expect_close(got, want, what=call, dtype=torch.float32, device=device, baseline=baseline)
    want.backward(golden(upstream))
    baseline.backward(upstream)
    expect_grads(mlp, gold, base, what=call, device=device)


# ---------------------------------------------------------------- DecoderBlock


def test_decoder_layout(tf):
    what = "DecoderBlock(32, 4, 40, eps=0.001)"
    block = rules.call(tf.DecoderBlock, 32, 4, 40, eps=1e-3, what=what)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        expect_linear(block, name, 32, 32, False, what)
    expect_norm(block, "attn_norm", nn.RMSNorm, 32, what, eps=1e-3)
    expect_norm(block, "mlp_norm", nn.RMSNorm, 32, what, eps=1e-3)
    if "SwiGLU" not in checks.type_name(getattr(block, "mlp", None)):
        raise checks.Wrong(f"{what}.mlp is {checks.type_name(getattr(block, 'mlp', None))}, expected SwiGLU(32, 40)")
    expect_linear(block.mlp, "gate_proj", 32, 40, False, f"{what}.mlp")
    expect_param_count(block, 4 * 32 * 32 + 2 * 32 + 3 * 32 * 40, what, "four projections without bias, two RMSNorm weights, SwiGLU")


# name: (n_heads, eps, shape, x scale)
DECODER_CASES = {
    "four_heads": (4, 1e-6, (2, 6, 32), 1.0),
    "one_head": (1, 1e-6, (2, 6, 32), 1.0),
    "one_token": (4, 1e-6, (3, 1, 32), 1.0),
    # Mean squares near 1e-6: eps matters, so an RMSNorm without eps=1e-6 shows.
    "tiny_values": (4, 1e-6, (2, 5, 32), 1e-3),
    "custom_eps": (8, 0.1, (2, 5, 32), 0.3),
}


def decoder_case(tf, name, device, dtype=torch.float32):
    heads, eps, shape, scale = DECODER_CASES[name]
    block, what = build(tf, "DecoderBlock", 32, heads, 40, eps=eps, device=device, dtype=dtype)
    return block, what, randn(*shape, seed=6, device=device, dtype=dtype, scale=scale), heads, eps


@pytest.mark.parametrize("case", list(DECODER_CASES))
def test_decoder_matches_reference(tf, device, case):
    block, what, x, heads, eps = decoder_case(tf, case, device)
    call = describe_call(what, x)
    got = rules.call(block, x, what=call)
    sd = weights(block, decoder_shapes("", 32, 40))
    want = ref_decoder(golden_params(sd, decoder_names("")), "", golden(x), heads, eps)
    baseline = ref_decoder(golden_params(sd, decoder_names(""), dtype=torch.float32, device=device), "", x, heads, eps)
    expect_close(got, want, what=call, dtype=torch.float32, device=device, baseline=baseline)


def test_decoder_gradients(tf, device):
    block, what, x, heads, eps = decoder_case(tf, "four_heads", device)
    x = x.detach().clone().requires_grad_()
    upstream = randn(*x.shape, seed=7, device=device)
    call = describe_call(what, x)
    got = rules.call(block, x, what=call, backward=upstream)
    checks.expect_tensor(got, shape=x.shape, dtype=x.dtype, device=device, what=call)
    sd = weights(block, decoder_shapes("", 32, 40))
    gold = golden_params(sd, decoder_names(""))
    base = golden_params(sd, decoder_names(""), dtype=torch.float32, device=device)
    gx, bx = golden(x), x.detach().clone().requires_grad_()
    ref_decoder(gold, "", gx, heads, eps).backward(golden(upstream))
    ref_decoder(base, "", bx, heads, eps).backward(upstream)
    expect_grads(block, gold, base, what=call, device=device)
    if x.grad is None:
        raise checks.Wrong(f"after backward through {call}, x.grad is None: is the input detached?")
    expect_close(x.grad, gx.grad, what=f"x.grad after {call}", dtype=torch.float32, device=device, baseline=bx.grad)


def test_decoder_passes_the_residual_through(tf, device):
    """x + attention(attn_norm(x)) + ...: with o_proj and the MLP's down_proj zeroed, both
    sublayers add zero and the block returns x unchanged."""
    block, what, x, _, _ = decoder_case(tf, "four_heads", device)
    zero_parameters(block, {"o_proj.weight", "mlp.down_proj.weight"})
    x = x * 3
    call = describe_call(what, x)
    got = rules.call(block, x, what=call)
    expect_close(got, golden(x), device=device, dtype=torch.float32,
                 what=f"{call} with o_proj and mlp.down_proj zeroed (must return x: the residual stream is not normalised)")  # fmt: skip


def test_decoder_is_causal(tf, device):
    """Changing x after position t leaves the outputs at positions 0..t unchanged."""
    block, what, x, _, _ = decoder_case(tf, "four_heads", device)
    t = 2
    other = x.clone()
    other[:, t + 1 :] = randn(2, x.shape[1] - t - 1, 32, seed=8, device=device, scale=3.0)
    call = describe_call(what, x)
    first = rules.call(block, x, what=call)
    second = rules.call(block, other, what=call)
    expect_close(second[:, : t + 1], golden(first[:, : t + 1]), device=device, dtype=torch.float32,
                 what=f"{call} at positions 0..{t} after x[:, {t + 1}:] was changed (attention must be causal)")  # fmt: skip


# ---------------------------------------------------------------- TinyGPT

VOCAB, GPT_D, GPT_HEADS, GPT_HIDDEN, MAX_LEN = 50, 32, 4, 40, 12


def gpt_what(n_layers: int) -> str:
    return f"TinyGPT({VOCAB}, {GPT_D}, {GPT_HEADS}, {n_layers}, {GPT_HIDDEN}, {MAX_LEN})"


def make_gpt(tf, n_layers, device, dtype=torch.float32):
    return build(tf, "TinyGPT", VOCAB, GPT_D, GPT_HEADS, n_layers, GPT_HIDDEN, MAX_LEN, device=device, dtype=dtype)


def token_ids(batch, t, device, seed=9):
    return torch.randint(0, VOCAB, (batch, t), generator=torch.Generator().manual_seed(seed)).to(device)


def gpt_param_count(n_layers: int) -> int:
    d, hdn = GPT_D, GPT_HIDDEN
    block = 4 * d * d + 2 * d + 3 * d * hdn
    return VOCAB * d + MAX_LEN * d + d + n_layers * block


def gpt_shapes(n_layers: int) -> dict:
    shapes = {"tok_emb.weight": (VOCAB, GPT_D), "pos_emb.weight": (MAX_LEN, GPT_D), "norm.weight": (GPT_D,)}
    for i in range(n_layers):
        shapes |= decoder_shapes(f"blocks.{i}.", GPT_D, GPT_HIDDEN)
    return shapes


def test_gpt_layout(tf):
    what = gpt_what(2)
    model = rules.call(tf.TinyGPT, VOCAB, GPT_D, GPT_HEADS, 2, GPT_HIDDEN, MAX_LEN, what=what)
    for name, rows in (("tok_emb", VOCAB), ("pos_emb", MAX_LEN)):
        emb = getattr(model, name, None)
        if not checks.is_instance(emb, nn.Embedding) or (emb.num_embeddings, emb.embedding_dim) != (rows, GPT_D):
            raise checks.Wrong(f"{what}.{name} is {emb if emb is not None else 'missing'}, expected nn.Embedding({rows}, {GPT_D})")
    blocks = getattr(model, "blocks", None)
    if not checks.is_instance(blocks, nn.ModuleList) or len(blocks) != 2:
        raise checks.Wrong(f"{what}.blocks is {checks.type_name(blocks)}, expected an nn.ModuleList of 2 DecoderBlocks")
    if not all("DecoderBlock" in checks.type_name(b) for b in blocks):
        raise checks.Wrong(f"{what}.blocks holds {[checks.type_name(b) for b in blocks]}, expected DecoderBlocks")
    expect_norm(model, "norm", nn.RMSNorm, GPT_D, what, eps=1e-6)
    expect_linear(model, "lm_head", GPT_D, VOCAB, False, what)
    expect_param_count(model, gpt_param_count(2), what, "embeddings, blocks and the final norm; the tied head adds none")


def test_gpt_head_tied_to_embedding(tf):
    what = gpt_what(1)
    model = rules.call(tf.TinyGPT, VOCAB, GPT_D, GPT_HEADS, 1, GPT_HIDDEN, MAX_LEN, what=what)
    head, emb = model.lm_head.weight, model.tok_emb.weight
    if checks.storage_of(head)["storage"] != checks.storage_of(emb)["storage"]:
        raise checks.Wrong(f"{what}.lm_head.weight and tok_emb.weight are separate tensors: tie them (lm_head.weight = tok_emb.weight)")
    names = [name for name, _ in model.named_parameters()]
    if "lm_head.weight" in names:
        raise checks.Wrong(
            f"{what}.lm_head.weight shares tok_emb.weight's storage but is a Parameter of its own: it is counted "
            "and trained separately. Assign the Parameter itself (lm_head.weight = tok_emb.weight), not its .data"
        )


# name: (n_layers, batch, T)
GPT_CASES = {"one_layer": (1, 2, 7), "two_layers": (2, 2, 9), "full_length": (1, 2, MAX_LEN), "one_token": (2, 3, 1)}


@pytest.mark.parametrize("case", list(GPT_CASES))
def test_gpt_matches_reference(tf, device, case):
    n_layers, batch, t = GPT_CASES[case]
    model, what = make_gpt(tf, n_layers, device)
    ids = token_ids(batch, t, device)
    call = describe_call(what, ids)
    got = rules.call(model, ids, what=call)
    sd = weights(model, gpt_shapes(n_layers))
    want = ref_gpt(golden_params(sd, gpt_names(n_layers)), ids.cpu(), GPT_HEADS, n_layers)
    baseline = ref_gpt(golden_params(sd, gpt_names(n_layers), dtype=torch.float32, device=device), ids, GPT_HEADS, n_layers)
    expect_close(got, want, what=call, dtype=torch.float32, device=device, baseline=baseline)


def test_gpt_gradients(tf, device):
    """Every parameter's gradient; the tied embedding's is the sum of its two uses."""
    model, what = make_gpt(tf, 2, device)
    ids = token_ids(2, 8, device)
    upstream = randn(2, 8, VOCAB, seed=10, device=device)
    call = describe_call(what, ids)
    got = rules.call(model, ids, what=call, backward=upstream)
    checks.expect_tensor(got, shape=(2, 8, VOCAB), dtype=torch.float32, device=device, what=call)
    sd = weights(model, gpt_shapes(2))
    gold = golden_params(sd, gpt_names(2))
    base = golden_params(sd, gpt_names(2), dtype=torch.float32, device=device)
    ref_gpt(gold, ids.cpu(), GPT_HEADS, 2).backward(golden(upstream))
    ref_gpt(base, ids, GPT_HEADS, 2).backward(upstream)
    expect_grads(model, gold, base, what=call, device=device)


def test_gpt_is_causal(tf, device):
    """Changing the tokens after position t leaves the logits at positions 0..t unchanged."""
    model, what = make_gpt(tf, 2, device)
    ids = token_ids(2, 9, device)
    t = 3
    other = ids.clone()
    other[:, t + 1 :] = (ids[:, t + 1 :] + 7) % VOCAB
    call = describe_call(what, ids)
    first = rules.call(model, ids, what=call)
    second = rules.call(model, other, what=call)
    expect_close(second[:, : t + 1], golden(first[:, : t + 1]), device=device, dtype=torch.float32,
                 what=f"{call} at positions 0..{t} after the tokens from {t + 1} on were changed (attention must be causal)")  # fmt: skip


def test_gpt_sees_positions(tf, device):
    """The same token at every position: causal attention over identical keys and values
    gives every position the same output unless position embeddings tell them apart."""
    model, what = make_gpt(tf, 1, device)
    ids = torch.full((1, 6), 5, dtype=torch.long, device=device)
    call = describe_call(what, ids)
    got = rules.call(model, ids, what=call)
    for t in range(1, 6):
        if (got[0, t] - got[0, 0]).abs().max().item() < 1e-3:
            raise checks.Wrong(f"{call} on one token repeated gave the same logits at positions 0 and {t}: are the position embeddings added?")


def test_gpt_rejects_too_long(tf, device):
    model, what = make_gpt(tf, 1, device)
    ids = token_ids(1, MAX_LEN + 1, device)
    rules.expect_raises(ValueError, model, ids, what=describe_call(what, ids) + f" with max_seq_len={MAX_LEN}")


def test_train_and_eval_agree(tf, device):
    """No dropout anywhere: the same output in training and in eval, and on a second call."""
    model, what = make_gpt(tf, 2, device)
    ids = token_ids(2, 8, device)
    call = describe_call(what, ids)
    rules.call(model.train, True, what=f"{what}.train()")
    training = rules.call(model, ids, what=call)
    again = rules.call(model, ids, what=call)
    rules.call(model.eval, what=f"{what}.eval()")
    evaluating = rules.call(model, ids, what=call)
    expect_close(again, golden(training), what=f"a second {call} in training mode", dtype=torch.float32, device=device)
    expect_close(evaluating, golden(training), what=f"{call} in eval mode, against training mode", dtype=torch.float32, device=device)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_gpt_low_precision(tf, device, dtype):
    """Logits come back in the model's dtype, within 4x torch's own error in it."""
    checks.need_dtype(dtype, device)
    model, what = make_gpt(tf, 2, device, dtype)
    ids = token_ids(2, 9, device)
    call = describe_call(what, ids) + f" in {str(dtype).removeprefix('torch.')}"
    got = rules.call(model, ids, what=call)
    sd = weights(model, gpt_shapes(2))
    want = ref_gpt(golden_params(sd, gpt_names(2)), ids.cpu(), GPT_HEADS, 2)
    baseline = ref_gpt(golden_params(sd, gpt_names(2), dtype=dtype, device=device), ids, GPT_HEADS, 2)
    expect_close(got, want, what=call, dtype=dtype, device=device, baseline=baseline)
