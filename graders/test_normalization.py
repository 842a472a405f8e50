"""Grader for the normalization kata: rms_norm, RMSNorm, layer_norm and batch_norm.

Every value is checked against torch's own ops (F.rms_norm, F.layer_norm, F.batch_norm)
computed in float64; gradients against torch's autograd; BatchNorm's running statistics
after each of several training steps; half precision against torch's own error in that
dtype; rules (no fused norm kernel, inputs unmodified, running statistics changed only in
training) on every call; work (no loop over rows or channels) and speed against the
reference.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("normalization")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def norm(impl):
    return impl.load("normalization")


@pytest.fixture(scope="module")
def reference_norm(reference):
    return reference.load("normalization")



# ---------------------------------------------------------------- torch's reference


def torch_rms_norm(x, weight=None, eps=1e-6):
    # F.rms_norm's own default eps is finfo(dtype).eps: pass this kata's explicitly.
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def torch_layer_norm(x, weight=None, bias=None, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def torch_batch_norm(x, running_mean, running_var, weight=None, bias=None, *, training, momentum=0.1, eps=1e-5):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training=training, momentum=momentum, eps=eps)


TORCH = {"rms_norm": torch_rms_norm, "layer_norm": torch_layer_norm, "batch_norm": torch_batch_norm}


# ---------------------------------------------------------------- inputs


def make_x(*shape, seed, device, dtype=torch.float32, scale=1.0, offset=0.0):
    """Seeded x * scale + offset, rounded once to dtype (the golden starts from the rounded values)."""
    return (randn(*shape, seed=seed, device="cpu", dtype=torch.float64, scale=scale) + offset).to(device=device, dtype=dtype)


def feature_case(name: str, device, dtype=torch.float32):
    """(x, {"weight": ..., "bias": ...}, kwargs) for one named input case of rms_norm and layer_norm;
    rms_norm uses only the weight. None entries are left out of the call."""

    def params(d, weight=True, bias=True):
        return {
            "weight": randn(d, seed=21, device=device, dtype=dtype, scale=0.5) + 1 if weight else None,
            "bias": randn(d, seed=22, device=device, dtype=dtype) if bias else None,
        }

    x = make_x(2, 5, 16, seed=1, device=device, dtype=dtype)
    cases = {
        "3d": (x, params(16), {}),
        # Any number of leading dims: a reduction over a fixed axis (dim=2) fits 3-D only.
        "4d": (make_x(2, 3, 4, 16, seed=9, device=device, dtype=dtype), params(16), {}),
        "2d_no_affine": (make_x(6, 32, seed=2, device=device, dtype=dtype), params(32, False, False), {}),
        "weight_only": (make_x(4, 16, seed=3, device=device, dtype=dtype), params(16, bias=False), {}),
        "bias_only": (make_x(4, 16, seed=3, device=device, dtype=dtype), params(16, weight=False), {}),
        "single_vector": (make_x(24, seed=4, device=device, dtype=dtype), params(24), {}),
        "custom_eps": (x, params(16), {"eps": 0.1}),
        # eps is as large as the (mean) square here: where it sits, and its default, matter.
        "tiny_values": (make_x(2, 5, 16, seed=5, device=device, dtype=dtype, scale=1e-4), params(16), {}),
        "large_values": (make_x(2, 5, 16, seed=6, device=device, dtype=dtype, scale=1e4), params(16), {}),
        # E[x^2] - E[x]^2 cancels catastrophically here: both are about 1e6, their difference 1.
        "large_offset": (make_x(2, 5, 16, seed=7, device=device, dtype=dtype, offset=1000.0), params(16), {}),
        "non_contiguous": (make_x(2, 16, 5, seed=8, device=device, dtype=dtype).transpose(1, 2), params(16), {}),
    }
    return cases[name]


FEATURE_CASES = ["3d", "4d", "2d_no_affine", "weight_only", "bias_only", "single_vector", "custom_eps",
                 "tiny_values", "large_values", "large_offset", "non_contiguous"]  # fmt: skip


def feature_kwargs(op: str, params: dict, kwargs: dict) -> dict:
    names = ("weight",) if op == "rms_norm" else ("weight", "bias")
    return {k: params[k] for k in names if params[k] is not None} | kwargs


def batch_case(name: str, device, dtype=torch.float32):
    """(x, running_mean, running_var, {"weight":, "bias":}, kwargs) for one named batch_norm case.
    Running statistics, weight and bias are float32 whatever x's dtype (as in mixed precision)."""

    def stats(c):
        mean = randn(c, seed=31, device=device, scale=0.5)
        var = randn(c, seed=32, device=device).abs() + 0.5
        return mean, var

    def params(c, weight=True, bias=True):
        return {
            "weight": randn(c, seed=33, device=device, scale=0.5) + 1 if weight else None,
            "bias": randn(c, seed=34, device=device) if bias else None,
        }

    def x(*shape, seed, **kw):
        return make_x(*shape, seed=seed, device=device, dtype=dtype, **kw)

    cases = {
        "2d": (x(16, 6, seed=1), *stats(6), params(6), {}),
        "3d": (x(8, 4, 5, seed=2), *stats(4), params(4), {}),
        "no_affine": (x(8, 4, 5, seed=3), *stats(4), params(4, False, False), {}),
        # One of the two alone: code that drops the other is seen for which one it drops.
        "weight_only": (x(8, 4, 5, seed=10), *stats(4), params(4, bias=False), {}),
        "bias_only": (x(8, 4, 5, seed=11), *stats(4), params(4, weight=False), {}),
        "custom_momentum": (x(8, 4, 5, seed=4), *stats(4), params(4), {"momentum": 0.3}),
        "custom_eps": (x(8, 4, 5, seed=5), *stats(4), params(4), {"eps": 0.1}),
        "tiny_values": (x(8, 4, 5, seed=6, scale=1e-3), *stats(4), params(4), {}),
        "large_values": (x(8, 4, 5, seed=7, scale=1e4), *stats(4), params(4), {}),
        "large_offset": (x(8, 4, 5, seed=8, offset=1000.0), *stats(4), params(4), {}),
        "non_contiguous": (x(8, 5, 4, seed=9).transpose(1, 2), *stats(4), params(4), {}),
    }
    return cases[name]


BATCH_TRAINING_CASES = ["2d", "3d", "no_affine", "weight_only", "bias_only", "custom_momentum", "custom_eps", "tiny_values", "large_values",
                        "large_offset", "non_contiguous"]  # fmt: skip
BATCH_EVAL_CASES = ["2d", "3d", "no_affine", "custom_eps", "non_contiguous"]


def batch_kwargs(params: dict, kwargs: dict, training: bool) -> dict:
    return {k: v for k, v in params.items() if v is not None} | kwargs | {"training": training}


def clones(*ts):
    return tuple(t.clone() for t in ts)


# ---------------------------------------------------------------- shared comparisons


def expect_matches_torch(fn, op: str, x, kwargs: dict, *, device, dtype=torch.float32, name=None):
    """fn(x, **kwargs) under the rules, against torch's op in float64 and in `dtype`."""
    what = describe_call(name or op, x, **kwargs)
    got = rules.call(fn, x, what=what, **kwargs)
    want = TORCH[op](golden(x), **{k: golden(v) for k, v in kwargs.items()})
    baseline = TORCH[op](x, **kwargs)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


def expect_batch_norm_matches_torch(norm, x, rm, rv, kwargs, *, device, dtype=torch.float32):
    """One batch_norm call: the output, and in training the running statistics updated in
    place (in eval, rules.call checks they are left alone)."""
    training = kwargs["training"]
    what = describe_call("batch_norm", x, rm, rv, **kwargs)
    g_rm, g_rv = golden(rm), golden(rv)  # fresh float64 copies: torch updates them in place
    b_rm, b_rv = clones(rm, rv)
    gold = {k: golden(v) for k, v in kwargs.items()}
    want = torch_batch_norm(golden(x), g_rm, g_rv, **gold)
    baseline = torch_batch_norm(x, b_rm, b_rv, **kwargs)
    got = rules.call(norm.batch_norm, x, rm, rv, what=what, may_modify=(rm, rv) if training else (), **kwargs)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)
    if training:
        for stat, mine, w, b in (("running_mean", rm, g_rm, b_rm), ("running_var", rv, g_rv, b_rv)):
            expect_close(mine, w, what=f"{stat} after {what} (updated in place)", dtype=rm.dtype, device=device, baseline=b)


def expect_gradients(call, torch_call, leaves: dict, *, what: str, device):
    """Gradients of every leaf through the learner's call(leaves, backward=upstream) against
    torch_call(leaves): the backward runs where the learner's graph is, the grads come back."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    gold = {k: golden(v) for k, v in leaves.items()}
    want_out = torch_call(gold)
    upstream = randn(*want_out.shape, seed=9, device=device)
    out = call(leaves, upstream)
    checks.expect_tensor(out, shape=want_out.shape, dtype=torch.float32, device=device, what=what)
    if not out.requires_grad:
        raise checks.Wrong(f"{what} returned a tensor with no autograd history: is everything detached?")
    grads = [leaf.grad for leaf in leaves.values()]
    want = torch.autograd.grad(want_out, list(gold.values()), golden(upstream))
    base_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    base = torch.autograd.grad(torch_call(base_leaves), list(base_leaves.values()), upstream)
    for name, g, w, b in zip(leaves, grads, want, base):
        if g is None:
            raise checks.Wrong(f"{what}: no gradient reaches {name}; is something detached?")
        expect_close(g, w, what=f"the gradient of {name} through {what}", dtype=torch.float32, device=device, baseline=b)


# ---------------------------------------------------------------- rms_norm and layer_norm


@pytest.mark.parametrize("case", FEATURE_CASES)
def test_rms_norm_matches_torch(norm, device, case):
    x, params, kwargs = feature_case(case, device)
    expect_matches_torch(norm.rms_norm, "rms_norm", x, feature_kwargs("rms_norm", params, kwargs), device=device)


@pytest.mark.parametrize("case", FEATURE_CASES)
def test_layer_norm_matches_torch(norm, device, case):
    x, params, kwargs = feature_case(case, device)
    expect_matches_torch(norm.layer_norm, "layer_norm", x, feature_kwargs("layer_norm", params, kwargs), device=device)


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("case", ["3d", "tiny_values", "large_offset"])
def test_gradients_match_torch(norm, device, op, case):
    """Gradients of x, weight and (layer_norm) bias: the normaliser depends on x too."""
    x, params, kwargs = feature_case(case, device)
    kw = feature_kwargs(op, params, kwargs)
    leaves = {"x": x} | {k: v for k, v in kw.items() if k in ("weight", "bias")}
    rest = {k: v for k, v in kw.items() if k not in leaves}
    what = describe_call(op, x, **kw)
    expect_gradients(
        lambda t, up: rules.call(getattr(norm, op), t["x"], what=what, backward=up, **{k: v for k, v in t.items() if k != "x"}, **rest),
        lambda t: TORCH[op](t["x"], **{k: v for k, v in t.items() if k != "x"}, **rest),
        leaves,
        what=what,
        device=device,
    )


# ---------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("dim", [8, 24], ids=lambda d: f"dim={d}")
def test_rms_norm_module_layout(norm, dim):
    what = f"RMSNorm({dim})"
    m = rules.call(norm.RMSNorm, dim, what=what)
    params = dict(m.named_parameters())
    if list(params) != ["weight"]:
        raise checks.Wrong(f"{what} has parameters {list(params)}, expected exactly one: 'weight' (an nn.Parameter)")
    w = params["weight"]
    checks.expect_tensor(w.detach(), shape=(dim,), dtype=torch.float32, device="cpu", what=f"{what}.weight")
    if not w.requires_grad:
        raise checks.Wrong(f"{what}.weight has requires_grad=False: it must be trainable")
    keys = list(m.state_dict())
    if keys != ["weight"]:
        raise checks.Wrong(f"{what}.state_dict() has keys {keys}, expected ['weight']")


@pytest.mark.parametrize("dim", [8, 24], ids=lambda d: f"dim={d}")
def test_rms_norm_module_starts_as_plain_rms_norm(norm, device, dim):
    """A fresh RMSNorm is F.rms_norm with no weight: its weight starts as ones."""
    x = make_x(3, dim, seed=3, device=device)
    m = rules.call(norm.RMSNorm, dim, what=f"RMSNorm({dim})").to(device)
    what = describe_call(f"RMSNorm({dim}) as constructed", x)
    got = rules.call(m, x, what=what)
    expect_close(got, torch_rms_norm(golden(x)), what=what, dtype=torch.float32, device=device, baseline=torch_rms_norm(x))


def make_rms_module(norm, dim, device, dtype=torch.float32, **kwargs):
    """The learner's RMSNorm with seeded weights, so the weight is seen to be used."""
    m = rules.call(norm.RMSNorm, dim, what=f"RMSNorm({dim})", **kwargs)
    rules.call(harness.assign_parameters, m, {"weight": randn(dim, seed=23, device="cpu", scale=0.5) + 1})
    return m.to(device=device, dtype=dtype)


@pytest.mark.parametrize("case, kwargs", [("3d", {}), ("tiny_values", {}), ("3d", {"eps": 0.1}), ("tiny_values", {"eps": 1e-4})],
                         ids=["default_eps", "default_eps_tiny_values", "eps=0.1", "eps=1e-4_tiny_values"])  # fmt: skip
def test_rms_norm_module_matches_torch(norm, device, case, kwargs):
    x, _, _ = feature_case(case, device)
    m = make_rms_module(norm, x.shape[-1], device, **kwargs)
    what = describe_call(f"RMSNorm({x.shape[-1]}{''.join(f', {k}={v:g}' for k, v in kwargs.items())})", x)
    got = rules.call(m, x, what=what)
    w = m.weight.detach()
    eps = kwargs.get("eps", 1e-6)
    expect_close(got, torch_rms_norm(golden(x), golden(w), eps), what=what, dtype=torch.float32, device=device,
                 baseline=torch_rms_norm(x, w, eps))  # fmt: skip


def test_rms_norm_module_gradients(norm, device):
    """One backward through the module: x.grad and weight.grad, as an optimiser would see them."""
    x, _, _ = feature_case("3d", device)
    m = make_rms_module(norm, 16, device)
    what = describe_call("RMSNorm(16)", x)
    w = m.weight.detach().clone()
    x_leaf = x.clone().requires_grad_()
    upstream = randn(*x.shape, seed=9, device=device)
    out = rules.call(m, x_leaf, what=what, backward=upstream)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    weight = m.weight  # after the backward: its .grad comes with it
    if not isinstance(weight, torch.Tensor) or not weight.requires_grad:
        raise checks.Wrong(f"{what}: weight does not require grad, so an optimiser cannot train it")
    gx, gw = golden(x).requires_grad_(), golden(w).requires_grad_()
    (torch_rms_norm(gx, gw) * golden(upstream)).sum().backward()
    bx, bw = x.clone().requires_grad_(), w.clone().requires_grad_()
    (torch_rms_norm(bx, bw) * upstream).sum().backward()
    if weight.grad is None:
        raise checks.Wrong(f"after backward through {what}, weight.grad is None: no gradient reaches it")
    expect_close(x_leaf.grad, gx.grad, what=f"x.grad after {what}", dtype=torch.float32, device=device, baseline=bx.grad)
    expect_close(weight.grad, gw.grad, what=f"weight.grad after {what}", dtype=torch.float32, device=device, baseline=bw.grad)


# ---------------------------------------------------------------- batch_norm


@pytest.mark.parametrize("case", BATCH_TRAINING_CASES)
def test_batch_norm_training_matches_torch(norm, device, case):
    x, rm, rv, params, kwargs = batch_case(case, device)
    expect_batch_norm_matches_torch(norm, x, rm, rv, batch_kwargs(params, kwargs, True), device=device)


@pytest.mark.parametrize("case", BATCH_EVAL_CASES)
def test_batch_norm_eval_uses_running_stats(norm, device, case):
    """In eval, the running statistics (far from this batch's) normalise x, and nothing changes."""
    x, rm, rv, params, kwargs = batch_case(case, device)
    expect_batch_norm_matches_torch(norm, x, rm, rv, batch_kwargs(params, kwargs, False), device=device)


def test_batch_norm_running_stats_over_steps(norm, device):
    """Five training steps from nn.BatchNorm1d's initial statistics (zeros, ones) on batches
    whose mean and spread drift, the running statistics compared after every step; then eval."""
    C = 3
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    params = {"weight": randn(C, seed=33, device=device, scale=0.5) + 1, "bias": randn(C, seed=34, device=device)}
    for step in range(5):
        x = make_x(6, C, 4, seed=40 + step, device=device, scale=1.0 + step, offset=2.0 * step)
        kwargs = batch_kwargs(params, {}, training=True)
        before = (rm.clone(), rv.clone())
        try:
            expect_batch_norm_matches_torch(norm, x, rm, rv, kwargs, device=device)
        except checks.Wrong as exc:
            raise checks.Wrong(f"training step {step + 1} of 5 (running stats before it: mean {before[0].tolist()}, "
                               f"var {before[1].tolist()}):\n{exc}") from None  # fmt: skip
    x = make_x(6, C, 4, seed=50, device=device, scale=3.0, offset=4.0)
    try:
        expect_batch_norm_matches_torch(norm, x, rm, rv, batch_kwargs(params, {}, training=False), device=device)
    except checks.Wrong as exc:
        raise checks.Wrong(f"eval after 5 training steps:\n{exc}") from None


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("case", ["3d", "2d"])
def test_batch_norm_gradients(norm, device, case, training):
    """Gradients of x, weight and bias; in training they flow through the batch statistics too."""
    x, rm, rv, params, kwargs = batch_case(case, device)
    kw = batch_kwargs(params, kwargs, training)
    rest = {k: v for k, v in kw.items() if k not in ("weight", "bias")}
    what = describe_call("batch_norm", x, rm, rv, **kw)

    def call(t, upstream):
        stats = clones(rm, rv)
        return rules.call(norm.batch_norm, t["x"], *stats, t["weight"], t["bias"], what=what,
                          may_modify=stats if training else (), backward=upstream, **rest)  # fmt: skip

    def torch_call(t):
        stats = clones(golden(rm), golden(rv)) if t["x"].dtype == torch.float64 else clones(rm, rv)
        return torch_batch_norm(t["x"], *stats, t["weight"], t["bias"], **rest)

    expect_gradients(call, torch_call, {"x": x, "weight": params["weight"], "bias": params["bias"]}, what=what, device=device)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", ["3d", "tiny_values", "large_values"])
@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "batch_norm", "RMSNorm"])
def test_low_precision(norm, device, op, case, dtype):
    """bfloat16 and float16 in, the same dtype out, as accurate as torch (which computes in
    float32): float16 cannot hold x^2 for |x| > 256, nor the squares of tiny values."""
    checks.need_dtype(dtype, device)
    if op == "batch_norm":
        x, rm, rv, params, kwargs = batch_case(case, device, dtype)
        expect_batch_norm_matches_torch(norm, x, rm, rv, batch_kwargs(params, kwargs, True), device=device, dtype=dtype)
        return
    x, params, kwargs = feature_case(case, device, dtype)
    if op == "RMSNorm":
        m = make_rms_module(norm, x.shape[-1], device, dtype=dtype)
        what = describe_call(f"RMSNorm({x.shape[-1]}).to({str(dtype).removeprefix('torch.')})", x)
        got = rules.call(m, x, what=what)
        w = m.weight.detach()
        expect_close(got, torch_rms_norm(golden(x), golden(w)), what=what, dtype=dtype, device=device, baseline=torch_rms_norm(x, w))
        return
    expect_matches_torch(getattr(norm, op), op, x, feature_kwargs(op, params, kwargs), device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "batch_norm", "RMSNorm"])
def test_statistics_in_float32(norm, device, op, dtype):
    """The docstrings promise the statistics in float32 for half-precision inputs. The
    values cannot show it in bfloat16 (torch's reductions accumulate in float32 internally,
    so a mean of bfloat16 squares stays inside bfloat16's tolerance), so the ops do: every
    reduction must return float32 and read x itself or float32 values."""
    checks.need_dtype(dtype, device)
    if op == "batch_norm":
        x, rm, rv, params, kwargs = batch_case("3d", device, dtype)
        kw = batch_kwargs(params, kwargs, True)
        what = describe_call(op, x, rm, rv, **kw)
        ops = rules.record_ops(norm.batch_norm, x, rm, rv, may_modify=(rm, rv), **kw)
    elif op == "RMSNorm":
        x, _, _ = feature_case("3d", device, dtype)
        m = make_rms_module(norm, x.shape[-1], device, dtype=dtype)
        what = describe_call(f"RMSNorm({x.shape[-1]}).to({str(dtype).removeprefix('torch.')})", x)
        ops = rules.record_ops(m, x)
    else:
        x, params, kwargs = feature_case("3d", device, dtype)
        kw = feature_kwargs(op, params, kwargs)
        what = describe_call(op, x, **kw)
        ops = rules.record_ops(getattr(norm, op), x, **kw)
    checks.expect_reductions_in_float32(ops, what=what)


# ---------------------------------------------------------------- work and speed


def feature_ops(norm, op, shape, device):
    x = make_x(*shape, seed=1, device=device)
    params = {"weight": randn(shape[-1], seed=21, device=device), "bias": randn(shape[-1], seed=22, device=device)}
    return rules.count_ops(getattr(norm, op), x, **feature_kwargs(op, params, {}))


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
def test_no_loop_over_rows(norm, device, op):
    """The same aten ops for 6 rows of 8 features as for 35 rows of 32."""
    checks.expect_same_op_count(
        partial(feature_ops, norm, op, (2, 3, 8), device), partial(feature_ops, norm, op, (5, 7, 32), device),
        what=op, small_desc="x (2, 3, 8)", large_desc="x (5, 7, 32)",
    )  # fmt: skip


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
def test_same_work_on_every_call(norm, device, op):
    """Two calls on the same input run the same aten ops: nothing random (a throwaway module
    built and initialised per call) hides in the work. The op-count checks rely on it."""
    checks.expect_same_op_count(
        partial(feature_ops, norm, op, (2, 3, 8), device), partial(feature_ops, norm, op, (2, 3, 8), device),
        what=op, small_desc="x (2, 3, 8)", large_desc="x (2, 3, 8) again",
    )  # fmt: skip


def batch_norm_ops(norm, shape, training, device):
    n, c, length = shape
    x = make_x(n, c, length, seed=1, device=device)
    stats = torch.zeros(c, device=device), torch.ones(c, device=device)
    w, b = randn(c, seed=33, device=device), randn(c, seed=34, device=device)
    return rules.count_ops(norm.batch_norm, x, *stats, w, b, training=training, may_modify=stats if training else ())


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_no_loop_over_channels(norm, device, training):
    """The same aten ops for (N, C, L) = (4, 3, 5) as for (9, 7, 11)."""
    checks.expect_same_op_count(
        partial(batch_norm_ops, norm, (4, 3, 5), training, device), partial(batch_norm_ops, norm, (9, 7, 11), training, device),
        what=f"batch_norm(training={training})", small_desc="x (4, 3, 5)", large_desc="x (9, 7, 11)",
    )  # fmt: skip


SPEED_SHAPES = {"rms_norm": (64, 128, 128), "layer_norm": (64, 128, 128), "batch_norm": (16, 4096, 4)}


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "batch_norm"])
def test_speed(norm, reference_norm, device, op, record_property):
    shape = SPEED_SHAPES[op]
    x = make_x(*shape, seed=1, device=device)
    d = shape[1] if op == "batch_norm" else shape[-1]
    w, b = randn(d, seed=21, device=device), randn(d, seed=22, device=device)
    may_modify = ()
    if op == "batch_norm":
        # Each side updates its own running statistics, as two modules would.
        mine = torch.zeros(d, device=device), torch.ones(d, device=device)
        ref = torch.zeros(d, device=device), torch.ones(d, device=device)
        learner = partial(norm.batch_norm, x, *mine, w, b, training=True)
        reference = partial(reference_norm.batch_norm, x, *ref, w, b, training=True)
        may_modify = (*mine, *ref)
    else:
        kw = feature_kwargs(op, {"weight": w, "bias": b}, {})
        learner = partial(getattr(norm, op), x, **kw)
        reference = partial(getattr(reference_norm, op), x, **kw)
    limit = TOPIC.speed[device.type]
    ratio = rules.speed_ratio(learner, reference, device=device, near=limit, may_modify=may_modify)
    record_property("speed_ratio", round(ratio, 3))
    checks.expect_fast_enough(ratio, limit, what=f"{op} on {shape}", device=device)
