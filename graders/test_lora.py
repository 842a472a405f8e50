"""Grader for the lora kata: LoRALinear (forward, merge, unmerge), apply_lora,
lora_state_dict and count_trainable.

Values and gradients are checked against the LoRA formula computed in float64 from the
module's own weights (F.linear), half precision against the same formula's own error in
that dtype; the initialisation (the layer starts as its base layer, lora_A as nn.Linear
initialises a weight); merge and unmerge against float64 and for idempotence; dropout by
recovering its mask through orthogonal adapters (only on the adapter path, only in
training, inverted); apply_lora on a small transformer-shaped model built here (which
modules are replaced, what is frozen, the trainable count r * (in + out) per adapter, a
saved adapter reloaded into a fresh model); and the adapter's work with torch's FLOP
counter (2 * r * (in + out) per token, never the (out, in) product B @ A). Rules (inputs
unmodified) apply to every call.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("lora")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]
IN, OUT = 24, 20


@pytest.fixture(scope="module")
def lora(impl):
    return impl.load("lora")


# ---------------------------------------------------------------- building layers


def make_base(d_in=IN, d_out=OUT, *, bias=True, seed=1, dtype=torch.float32) -> nn.Linear:
    base = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        base.weight.copy_(randn(d_out, d_in, seed=seed, device="cpu", scale=d_in**-0.5))
        if bias:
            base.bias.copy_(randn(d_out, seed=seed + 1, device="cpu", scale=0.1))
    return base.to(dtype)


def make_layer(lora, base, r, alpha, *, device, seeded=True, **kwargs):
    """The learner's LoRALinear around `base` (sent to the executor), moved to device, with
    seeded non-zero adapters when `seeded` (B is zero at initialisation: no update shows)."""
    what = f"LoRALinear(nn.Linear({base.in_features}, {base.out_features}, bias={base.bias is not None}), r={r}, alpha={alpha:g}"
    what += "".join(f", {k}={v}" for k, v in kwargs.items()) + ")"
    layer = rules.call(lora.LoRALinear, base, r, alpha, what=what, **kwargs)
    if seeded:
        rules.call(harness.assign_parameters, layer, {
            "lora_A": randn(r, base.in_features, seed=11, device="cpu", scale=base.in_features**-0.5),
            "lora_B": randn(base.out_features, r, seed=12, device="cpu", scale=0.5),
        })  # fmt: skip
    return layer.to(device), what


def adapter_weights(layer, what) -> dict:
    """base.weight, base.bias (or None), lora_A, lora_B of the learner's layer, read in one request."""
    sd = {name: t.detach() for name, t in layer.state_dict().items()}
    for name in ("base.weight", "lora_A", "lora_B"):
        if name not in sd:
            raise checks.Wrong(f"{what}.state_dict() has no {name}: expected base (the nn.Linear), lora_A and lora_B")
    return {"W": sd["base.weight"], "b": sd.get("base.bias"), "A": sd["lora_A"], "B": sd["lora_B"]}


def lora_formula(w: dict, x, scaling, *, dtype=torch.float64, device="cpu", requires_grad=False):
    """base(x) + x A^T B^T * scaling in `dtype`; with requires_grad, returns (out, leaves)."""
    leaves = {k: (None if v is None else v.to(device=device, dtype=dtype).requires_grad_(requires_grad)) for k, v in w.items()}
    xx = x.detach().to(device=device, dtype=dtype).requires_grad_(requires_grad)
    out = F.linear(xx, leaves["W"], leaves["b"]) + F.linear(F.linear(xx, leaves["A"]), leaves["B"]) * scaling
    return out, leaves, xx


# ---------------------------------------------------------------- LoRALinear


@pytest.mark.parametrize("r", [0, -2])
def test_rejects_rank_below_one(lora, r):
    rules.expect_raises(ValueError, lora.LoRALinear, make_base(), r, 8.0, what=f"LoRALinear(nn.Linear({IN}, {OUT}), r={r}, alpha=8)")


@pytest.mark.parametrize("r, alpha", [(4, 8.0), (4, 6), (1, 1.0)], ids=["r=4,alpha=8", "r=4,alpha=6", "r=1,alpha=1"])
def test_layout(lora, r, alpha):
    layer, what = make_layer(lora, make_base(), r, alpha, device="cpu", seeded=False)
    if not checks.is_instance(getattr(layer, "base", None), nn.Linear):
        raise checks.Wrong(f"{what}.base is {checks.type_name(getattr(layer, 'base', None))}, expected the wrapped nn.Linear")
    params = dict(layer.named_parameters())
    for name, shape in (("lora_A", (r, IN)), ("lora_B", (OUT, r))):
        if name not in params:
            raise checks.Wrong(f"{what} has no parameter {name}: expected an nn.Parameter of shape {shape}")
        checks.expect_tensor(params[name].detach(), shape=shape, dtype=torch.float32, device="cpu", what=f"{what}.{name}")
    trainable = sorted(n for n, p in params.items() if p.requires_grad)
    if trainable != ["lora_A", "lora_B"]:
        raise checks.Wrong(f"{what}'s trainable parameters are {trainable}, expected ['lora_A', 'lora_B'] (freeze base.weight and base.bias)")
    if not torch.equal(params["lora_B"].detach(), torch.zeros(OUT, r)):
        raise checks.Wrong(f"{what}.lora_B starts non-zero: it must start as zeros, so the layer starts as its base")
    scaling = getattr(layer, "scaling", None)
    if not isinstance(scaling, (int, float)) or abs(scaling - alpha / r) > 1e-12:
        raise checks.Wrong(f"{what}.scaling is {scaling!r}, expected alpha / r = {alpha / r:g}")
    if getattr(layer, "merged", None) is not False:
        raise checks.Wrong(f"{what}.merged is {getattr(layer, 'merged', 'missing')!r}, expected False before merge()")


def test_lora_A_initialised_like_linear(lora):
    """kaiming_uniform_(a=sqrt(5)): uniform in [-1/sqrt(in), 1/sqrt(in)], std bound/sqrt(3)."""
    d_in, r = 256, 16
    layer, what = make_layer(lora, make_base(d_in, 32), r, 16.0, device="cpu", seeded=False)
    a = dict(layer.named_parameters())["lora_A"].detach().double()
    bound = 1 / math.sqrt(d_in)
    if a.abs().max().item() > bound * (1 + 1e-5):
        raise checks.Wrong(f"{what}.lora_A has values up to {a.abs().max().item():.4g}; nn.Linear's init keeps them within 1/sqrt(in_features) = {bound:.4g}")
    std = a.std().item()
    if not 0.9 * bound / math.sqrt(3) <= std <= 1.1 * bound / math.sqrt(3):
        raise checks.Wrong(
            f"{what}.lora_A has standard deviation {std:.4g}; a uniform init in [-{bound:.4g}, {bound:.4g}] has {bound / math.sqrt(3):.4g} "
            "(use nn.init.kaiming_uniform_(A, a=math.sqrt(5)), as nn.Linear does)"
        )


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_output_equals_base_at_init(lora, device, bias):
    base = make_base(bias=bias)
    layer, what = make_layer(lora, base, 4, 8.0, device=device, seeded=False)
    x = randn(3, 5, IN, seed=2, device=device)
    call = describe_call(what, x)
    got = rules.call(layer, x, what=call)
    want = F.linear(golden(x), golden(base.weight), golden(base.bias))
    expect_close(got, want, what=f"{call} at initialisation (must equal the base layer's output)", dtype=torch.float32, device=device,
                 baseline=base.to(device)(x).detach())  # fmt: skip


# name: (bias, r, alpha, x shape)
VALUE_CASES = {
    "3d": (True, 4, 8.0, (2, 5, IN)),
    "2d": (True, 4, 8.0, (7, IN)),
    "no_bias": (False, 4, 8.0, (2, 5, IN)),
    "alpha_not_a_multiple_of_r": (True, 4, 6, (2, 5, IN)),
    "rank_one": (True, 1, 2.0, (2, 5, IN)),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_matches_reference(lora, device, case):
    bias, r, alpha, shape = VALUE_CASES[case]
    layer, what = make_layer(lora, make_base(bias=bias), r, alpha, device=device)
    x = randn(*shape, seed=3, device=device)
    call = describe_call(what, x)
    got = rules.call(layer, x, what=call)
    w = adapter_weights(layer, what)
    want, _, _ = lora_formula(w, x, alpha / r)
    baseline, _, _ = lora_formula(w, x, alpha / r, dtype=torch.float32, device=device)
    expect_close(got, want, what=call, dtype=torch.float32, device=device, baseline=baseline)


def test_gradients_reach_only_the_adapter(lora, device):
    layer, what = make_layer(lora, make_base(), 4, 8.0, device=device)
    x = randn(2, 5, IN, seed=4, device=device).requires_grad_()
    upstream = randn(2, 5, OUT, seed=5, device=device)
    call = describe_call(what, x)
    got = rules.call(layer, x, what=call, backward=upstream)
    checks.expect_tensor(got, shape=(2, 5, OUT), dtype=torch.float32, device=device, what=call)
    w = adapter_weights(layer, what)
    want, gold, gx = lora_formula(w, x, 2.0, requires_grad=True)
    want.backward(golden(upstream))
    base_out, base, bx = lora_formula(w, x, 2.0, dtype=torch.float32, device=device, requires_grad=True)
    base_out.backward(upstream)
    params = dict(layer.named_parameters())
    for name in ("base.weight", "base.bias"):
        if params[name].grad is not None:
            raise checks.Wrong(f"after backward through {call}, {name}.grad is set: the base layer must be frozen (requires_grad False)")
    for name, key in (("lora_A", "A"), ("lora_B", "B")):
        g = params[name].grad
        if g is None:
            raise checks.Wrong(f"after backward through {call}, {name}.grad is None: no gradient reaches the adapter")
        expect_close(g, gold[key].grad, what=f"{name}.grad after {call}", dtype=torch.float32, device=device, baseline=base[key].grad)
    if x.grad is None:
        raise checks.Wrong(f"after backward through {call}, x.grad is None")
    expect_close(x.grad, gx.grad, what=f"x.grad after {call}", dtype=torch.float32, device=device, baseline=bx.grad)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision(lora, device, dtype):
    """A half-precision base gets adapters in its dtype, and returns its dtype."""
    checks.need_dtype(dtype, device)
    layer, what = make_layer(lora, make_base(dtype=dtype), 4, 8.0, device=device)
    x = randn(2, 5, IN, seed=6, device=device, dtype=dtype)
    call = describe_call(what, x)
    got = rules.call(layer, x, what=call)
    w = adapter_weights(layer, what)
    for key, name in (("A", "lora_A"), ("B", "lora_B")):
        if w[key].dtype != dtype:
            raise checks.Wrong(f"{what}.{name} is {w[key].dtype} for a {dtype} base layer: create the adapters in base.weight's dtype")
    want, _, _ = lora_formula(w, x, 2.0)
    baseline, _, _ = lora_formula(w, x, 2.0, dtype=dtype, device=device)
    expect_close(got, want, what=call, dtype=dtype, device=device, baseline=baseline)


# ---------------------------------------------------------------- merge and unmerge


def merged_state(layer):
    """(layer.merged, base.weight with its requires_grad), read from the executor."""
    return getattr(layer, "merged", None), dict(layer.named_parameters())["base.weight"]


def test_merge_folds_the_update_into_the_base(lora, device):
    layer, what = make_layer(lora, make_base(), 4, 6, device=device)
    x = randn(2, 5, IN, seed=7, device=device)
    w = adapter_weights(layer, what)
    before = rules.call(layer, x, what=describe_call(what, x))
    want_w = golden(w["W"]) + 1.5 * golden(w["B"]) @ golden(w["A"])
    base_w = w["W"] + 1.5 * w["B"] @ w["A"]
    for attempt in ("merge()", "merge() a second time"):
        rules.call(layer.merge, what=f"{what}.{attempt}")
        merged, weight = merged_state(layer)
        if merged is not True:
            raise checks.Wrong(f"after {what}.{attempt}, merged is {merged!r}, expected True")
        expect_close(weight.detach(), want_w, what=f"base.weight after {what}.{attempt} (W + alpha/r * B @ A)", dtype=torch.float32,
                     device=device, baseline=base_w)  # fmt: skip
        after = rules.call(layer, x, what=describe_call(f"{what} after {attempt}", x))
        expect_close(after, golden(before), what=f"{what}'s output after {attempt}, against before merging", dtype=torch.float32, device=device)


def test_merge_keeps_the_base_frozen(lora, device):
    """merge() and unmerge() update the frozen Parameter in place: a new nn.Parameter
    would be trainable (and unseen by anything holding the old one)."""
    layer, what = make_layer(lora, make_base(), 4, 8.0, device=device)
    for step in ("merge", "unmerge"):
        rules.call(getattr(layer, step), what=f"{what}.{step}()")
        _, weight = merged_state(layer)
        if weight.requires_grad:
            raise checks.Wrong(f"after {what}.{step}(), base.weight requires grad: update the frozen weight in place "
                               "(under torch.no_grad()), do not assign a new Parameter")  # fmt: skip


def test_unmerge_before_merge_does_nothing(lora, device):
    layer, what = make_layer(lora, make_base(), 4, 8.0, device=device)
    w = adapter_weights(layer, what)
    rules.call(layer.unmerge, what=f"{what}.unmerge() before any merge()")
    merged, weight = merged_state(layer)
    if merged is not False or not torch.equal(weight.detach().cpu(), w["W"].cpu()):
        raise checks.Wrong(f"{what}.unmerge() before merge() changed base.weight or merged ({merged!r}): it must do nothing when not merged")


def test_unmerge_restores_the_base(lora, device):
    layer, what = make_layer(lora, make_base(), 4, 8.0, device=device)
    x = randn(2, 5, IN, seed=8, device=device)
    w = adapter_weights(layer, what)
    rules.call(layer.merge, what=f"{what}.merge()")
    for attempt in ("unmerge()", "unmerge() a second time"):
        rules.call(layer.unmerge, what=f"{what}.merge(), then {attempt}")
        merged, weight = merged_state(layer)
        if merged is not False:
            raise checks.Wrong(f"after {what}.merge() and {attempt}, merged is {merged!r}, expected False")
        # W + s BA - s BA in float32: the round trip's own rounding is the baseline.
        expect_close(weight.detach(), golden(w["W"]), what=f"base.weight after {what}.merge() and {attempt}", dtype=torch.float32,
                     device=device, baseline=(w["W"] + 2.0 * w["B"] @ w["A"]) - 2.0 * w["B"] @ w["A"])  # fmt: skip
    got = rules.call(layer, x, what=describe_call(f"{what} after merge() and unmerge()", x))
    want, _, _ = lora_formula(w, x, 2.0)
    expect_close(got, want, what=f"{what}'s output after merge() and unmerge()", dtype=torch.float32, device=device)


# ---------------------------------------------------------------- dropout


def orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


P_DROP, N_DROP = 0.5, 8


def dropout_layer(lora, device):
    base = make_base(N_DROP, N_DROP)
    layer, what = make_layer(lora, base, N_DROP, float(N_DROP), device=device, seeded=False, dropout=P_DROP)
    rules.call(layer.train, True, what=f"{what}.train()")
    x = randn(16, N_DROP, seed=9, device=device) + 2.0  # no element near zero
    return base, layer, describe_call(f"{what} in training", x), x


def recovered_ratio(lora, device):
    """With orthogonal lora_A and lora_B (r = in = out), the adapter's input can be
    recovered from the output: update @ B @ A = dropout(x) @ A.T @ B.T @ B @ A = dropout(x).
    Returns (dropout(x) / x, the call's description)."""
    base, layer, call, x = dropout_layer(lora, device)
    a, b = orthogonal(N_DROP, 13), orthogonal(N_DROP, 14)
    rules.call(harness.assign_parameters, layer, {"lora_A": a, "lora_B": b})
    got = rules.call(layer, x, what=call)
    # Divided by the layer's own scaling (alpha / r = 1 here), so a wrong scaling is left to
    # the value checks and these look at dropout alone.
    scaling = getattr(layer, "scaling", 1.0)
    scaling = scaling if isinstance(scaling, (int, float)) and scaling != 0 else 1.0
    update = (got.double().cpu() - F.linear(golden(x), golden(base.weight), golden(base.bias))) / scaling
    return update @ b.double() @ a.double() / golden(x), call


def test_dropout_spares_the_base_path(lora, device):
    """In training, with lora_B still zero the layer is exactly its base: dropout never
    touches the base path."""
    base, layer, call, x = dropout_layer(lora, device)
    got = rules.call(layer, x, what=call)
    expect_close(got, F.linear(golden(x), golden(base.weight), golden(base.bias)), dtype=torch.float32, device=device,
                 what=f"{call} with lora_B still zero (the base path must not see dropout)")  # fmt: skip


def test_dropout_masks_the_adapter_input(lora, device):
    """The adapter's input, recovered through orthogonal adapters, is x with whole
    elements dropped and the rest all scaled alike, about p of them dropped: dropout on x,
    not on x @ A.T."""
    ratio, call = recovered_ratio(lora, device)
    zeroed = ratio.abs() < 1e-3
    kept = ratio[~zeroed]
    if kept.numel() == 0 or (kept - kept.median()).abs().max().item() > 1e-3:
        i = tuple(int(j) for j in torch.nonzero(~zeroed)[0]) if kept.numel() else (0, 0)
        raise checks.Wrong(
            f"{call}: the adapter's input, recovered through orthogonal lora_A and lora_B, is x times {ratio[i].item():.4g} at "
            f"{i}; dropout on x gives 0 or one common factor everywhere (apply it to x, before lora_A)"
        )
    frac = zeroed.double().mean().item()
    if not 0.3 <= frac <= 0.7:
        raise checks.Wrong(f"{call}: {frac:.0%} of the adapter's inputs were dropped with dropout={P_DROP}; expected about {P_DROP:.0%}")


def test_dropout_is_inverted(lora, device):
    """Kept inputs are scaled by 1 / (1 - p), so that eval sees the same expected update."""
    ratio, call = recovered_ratio(lora, device)
    kept = ratio[ratio.abs() >= 1e-3]
    want = 1 / (1 - P_DROP)
    if kept.numel() == 0 or (kept - want).abs().max().item() > 1e-3:
        factor = kept.median().item() if kept.numel() else 0.0
        raise checks.Wrong(f"{call}: the kept inputs of the adapter are x times {factor:.4g}; inverted dropout scales them by 1/(1-p) = {want:g}")


def test_no_dropout_in_eval(lora, device):
    layer, what = make_layer(lora, make_base(), 4, 8.0, device=device, dropout=0.5)
    rules.call(layer.eval, what=f"{what}.eval()")
    x = randn(3, 5, IN, seed=10, device=device)
    call = describe_call(f"{what} in eval mode", x)
    got = rules.call(layer, x, what=call)
    w = adapter_weights(layer, what)
    want, _, _ = lora_formula(w, x, 2.0)
    baseline, _, _ = lora_formula(w, x, 2.0, dtype=torch.float32, device=device)
    expect_close(got, want, what=call, dtype=torch.float32, device=device, baseline=baseline)


# ---------------------------------------------------------------- work


@pytest.mark.parametrize("r", [2, 8])
def test_adapter_flops_are_low_rank(lora, device, r):
    """The adapter adds 2 * r * (in + out) FLOPs per token to the base layer's: x @ A.T
    then @ B.T. Forming B @ A (out, in) costs 2 * out * r * in at every call, and applying
    it 2 * in * out per token, as much as the base layer."""
    d_in, d_out, tokens = 128, 96, 16
    layer, what = make_layer(lora, make_base(d_in, d_out), r, 2.0 * r, device=device)
    x = randn(tokens, d_in, seed=15, device=device)
    total = rules.count_flops(layer, x)
    base = rules.count_flops(layer.base, x)
    adapter = total - base
    expected = 2 * tokens * r * (d_in + d_out)
    if adapter > 1.25 * expected:
        raise checks.Wrong(
            f"{describe_call(what, x)} costs {total} FLOPs, {adapter} more than its base layer; the low-rank path needs "
            f"2 * tokens * r * (in + out) = {expected}. Compute (x @ A.T) @ B.T, never B @ A or A.T @ B.T"
        )
    rules.call(layer.merge, what=f"{what}.merge()")
    merged = rules.count_flops(layer, x)
    if merged > base:
        raise checks.Wrong(f"{what} after merge() costs {merged} FLOPs per call, more than its base layer's {base}: once merged, forward is base(x) alone")


# ---------------------------------------------------------------- apply_lora on a model


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        scores = self.q_proj(x) @ self.k_proj(x).transpose(-2, -1) / math.sqrt(x.shape[-1])
        t = x.shape[-2]
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        return self.o_proj(torch.softmax(scores, dim=-1) @ self.v_proj(x))


class MLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d)
        self.norm2, self.mlp = nn.LayerNorm(d), MLP(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallLM(nn.Module):
    """Transformer-shaped: the Linears named as in LLaMA-style models, nested two levels
    deep in a ModuleList, next to LayerNorms, an embedding and a head; one Embedding is
    named like a target (it must not be replaced: it is not an nn.Linear)."""

    def __init__(self, vocab=30, d=16, hidden=24, layers=2):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.v_proj = nn.Embedding(vocab, d)  # named like a target, but not a Linear
        self.blocks = nn.ModuleList(Block(d, hidden) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.tok_emb(ids) + 0.1 * self.v_proj(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


TARGETS = ("q_proj", "v_proj", "down_proj")
REPLACED = [f"blocks.{i}.{name}" for i in range(2) for name in ("attn.q_proj", "attn.v_proj", "mlp.down_proj")]
SHAPES = {"attn.q_proj": (16, 16), "attn.v_proj": (16, 16), "mlp.down_proj": (24, 16)}  # (in, out)
R, ALPHA = 4, 8.0


def small_lm(seed=20) -> nn.Module:
    model = SmallLM()
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(model.named_parameters())):
            p.copy_(randn(*p.shape, seed=seed + i, device="cpu", scale=0.3))
    return model


def adapted(lora, device, *, seed=20, targets=TARGETS, seeded=True):
    """A seeded SmallLM placed in the executor and passed through the learner's apply_lora;
    the adapters given seeded non-zero values (when `seeded`) so that they show."""
    (model,) = checks.place(lora, small_lm(seed))
    what = f"apply_lora(model, {list(targets)}, r={R}, alpha={ALPHA:g})"
    returned = rules.call(lora.apply_lora, model, list(targets), R, ALPHA, what=what)
    if seeded:
        values = {}
        for i, name in enumerate(REPLACED):
            d_in, d_out = SHAPES[name.split(".", 2)[2]]
            values[f"{name}.lora_A"] = randn(R, d_in, seed=40 + i, device="cpu", scale=0.3)
            values[f"{name}.lora_B"] = randn(d_out, R, seed=60 + i, device="cpu", scale=0.3)
        names = {n for n, _ in model.named_parameters()}
        missing = sorted(set(values) - names)
        if missing:
            raise checks.Wrong(f"after {what}, the model has no parameters {missing[:3]}: were the target Linears replaced by LoRALinear?")
        rules.call(harness.assign_parameters, model, values)
    return model.to(device), returned, what


def ids_for(device):
    return torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(21)).to(device)


def test_apply_lora_replaces_the_target_linears(lora, device):
    model, returned, what = adapted(lora, device, seeded=False)
    if checks.type_name(returned) != "SmallLM" or checks.storage_of(returned.head.weight) != checks.storage_of(model.head.weight):
        raise checks.Wrong(f"{what} returned {checks.type_name(returned)}; expected the model itself (modified in place)")
    for name in REPLACED:
        got = checks.type_name(model.get_submodule(name))
        if "LoRALinear" not in got:
            raise checks.Wrong(f"after {what}, {name} is {got}, expected a LoRALinear around the original nn.Linear")
    for name in ("head", "blocks.0.attn.k_proj", "blocks.1.attn.o_proj", "blocks.1.mlp.up_proj"):
        got = checks.type_name(model.get_submodule(name))
        if got != "Linear":
            raise checks.Wrong(f"after {what}, {name} is {got}: only Linears named {list(TARGETS)} are replaced")
    if checks.type_name(model.get_submodule("v_proj")) != "Embedding":
        raise checks.Wrong(f"after {what}, the Embedding named v_proj was replaced: only nn.Linear modules are")
    original = small_lm()
    for name in REPLACED:
        w = model.get_submodule(name).base.weight
        if not torch.equal(w.detach().cpu(), original.get_submodule(name).weight.detach()):
            raise checks.Wrong(f"after {what}, {name}.base.weight differs from the original {name}.weight: wrap the model's own Linear")


def adapter_names() -> list[str]:
    return sorted(f"{name}.{ab}" for name in REPLACED for ab in ("lora_A", "lora_B"))


def test_apply_lora_freezes_everything_else(lora, device):
    model, _, what = adapted(lora, device, seeded=False)
    extra = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in adapter_names())
    if extra:
        raise checks.Wrong(f"after {what}, parameters other than the adapters are still trainable: {extra[:4]}"
                           f"{' and more' if len(extra) > 4 else ''}; freeze every parameter of the model first")  # fmt: skip


def test_adapters_are_trainable(lora, device):
    model, _, what = adapted(lora, device, seeded=False)
    params = dict(model.named_parameters())
    frozen = [n for n in adapter_names() if n in params and not params[n].requires_grad]
    if frozen:
        raise checks.Wrong(f"after {what}, the adapters {frozen[:3]} do not require grad: freeze the model before wrapping, not after")


def test_adapted_model_starts_as_the_original(lora, device):
    model, _, what = adapted(lora, device, seeded=False)
    ids = ids_for(device)
    got = rules.call(model, ids, what=f"the model after {what}")
    want = small_lm().double()(ids.cpu())
    baseline = small_lm().to(device)(ids).detach()
    expect_close(got, want, what=f"the model's output right after {what} (must equal the original model's)", dtype=torch.float32,
                 device=device, baseline=baseline)  # fmt: skip


def test_count_trainable(lora, device):
    model, _, what = adapted(lora, device, seeded=False)
    got = rules.call(lora.count_trainable, model, what=f"count_trainable(model after {what})")
    expected = sum(R * (d_in + d_out) for name in REPLACED for d_in, d_out in [SHAPES[name.split(".", 2)[2]]])
    if isinstance(got, bool) or not isinstance(got, int):
        raise checks.Wrong(f"count_trainable returned {checks.describe(got)} ({type(got).__name__}), expected a Python int")
    if got != expected:
        raise checks.Wrong(f"count_trainable(model after {what}) is {got}, expected sum of r * (in + out) over the adapters = {expected}")


def test_count_trainable_counts_a_shared_parameter_once(lora):
    (tied,) = checks.place(lora, TiedPair())
    got = rules.call(lora.count_trainable, tied, what="count_trainable(a model whose two Linears share one weight)")
    if got != 8 * 8 + 8 + 8:
        raise checks.Wrong(f"count_trainable on two Linears sharing one (8, 8) weight, with their own biases, is {got}, "
                           f"expected {8 * 8 + 8 + 8}: a shared Parameter counts once, and buffers not at all")  # fmt: skip


class TiedPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.register_buffer("steps", torch.zeros(5))


def test_lora_state_dict_holds_only_the_adapters(lora, device):
    model, _, what = adapted(lora, device)
    saved = rules.call(lora.lora_state_dict, model, what=f"lora_state_dict(model after {what})")
    if not isinstance(saved, dict):
        raise checks.Wrong(f"lora_state_dict returned {type(saved).__name__}, expected a dict")
    expected = adapter_names()
    if sorted(saved) != expected:
        extra, missing = sorted(set(saved) - set(expected)), sorted(set(expected) - set(saved))
        raise checks.Wrong(f"lora_state_dict(model) has keys {sorted(saved)[:4]}...; expected exactly the adapters' "
                           f"keys as in model.state_dict() ({expected[:2]}...): extra {extra[:3]}, missing {missing[:3]}")  # fmt: skip
    full = model.state_dict()
    for key in expected:
        if not torch.equal(saved[key].detach().cpu(), full[key].detach().cpu()):
            raise checks.Wrong(f"lora_state_dict(model)[{key!r}] differs from model.state_dict()[{key!r}]")


def test_saved_adapter_reloads_into_a_fresh_model(lora, device):
    model, _, what = adapted(lora, device)
    saved = rules.call(lora.lora_state_dict, model, what=f"lora_state_dict(model after {what})")
    fresh, _, _ = adapted(lora, device, seeded=False)
    rules.call(fresh.load_state_dict, saved, strict=False, what="fresh_model.load_state_dict(lora_state_dict(model), strict=False)")
    ids = ids_for(device)
    want = rules.call(model, ids, what="the trained model")
    got = rules.call(fresh, ids, what="a fresh apply_lora model with the saved adapter loaded")
    expect_close(got, golden(want), what="a fresh apply_lora model's output after loading lora_state_dict(model), against model's",
                 dtype=torch.float32, device=device)  # fmt: skip
