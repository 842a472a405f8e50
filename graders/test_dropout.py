"""Grader for the dropout kata: dropout (inverted dropout) and the Dropout module.

The mask is random, so values cannot be compared with F.dropout's element by element.
Instead: every output element is exactly 0 or x / (1 - p) (within the dtype's tolerance
against float64); the kept fraction and the output's mean are within statistical bounds
(Hoeffding, each failing a correct implementation, whichever valid way it draws its
random numbers, with probability below 1e-6); masks are independent across rows and
columns; eval, p = 0 and p = 1 are exact; gradients are masked and scaled like the output;
the same generator state gives the same mask, and generator=None follows torch's global
generator. Rules on every call: no dropout op of torch's at the aten level; x unmodified;
a p outside [0, 1] raises ValueError.

Every check starts from the same seed (the global generator in the executor) and seeds
its own generators, so a verdict is the same on every run; the false-failure rates below
are over the random seeds a correct implementation might meet.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kata import checks, course
from kata.checks import describe_call, expect_close, golden

TOPIC = course.get("dropout")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]

# The most a statistical check may fail a correct implementation: two-sided Hoeffding
# bounds at this level. For n independent draws in [a_i, b_i],
# P(|sum - E[sum]| >= t) <= 2 exp(-2 t^2 / sum (b_i - a_i)^2).
FALSE_FAILURE = 1e-6
LOG_TERM = math.log(2 / FALSE_FAILURE)  # 14.51


@pytest.fixture(scope="module")
def drop(impl):
    return impl.load("dropout")


# ---------------------------------------------------------------- inputs


def positive_x(*shape, seed, device, dtype=torch.float32):
    """Seeded values in [1, 2), rounded once to dtype: no zeros, so out != 0 is the mask."""
    g = torch.Generator().manual_seed(seed)
    return (1 + torch.rand(*shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def gen(seed, device):
    return torch.Generator(device=device).manual_seed(seed)


def kept_fraction_bound(n: int) -> float:
    """eps with P(|kept / n - (1 - p)| >= eps) <= FALSE_FAILURE: the kept indicators are n
    independent Bernoulli(1 - p) draws in [0, 1], so 2 exp(-2 n eps^2) = FALSE_FAILURE."""
    return math.sqrt(LOG_TERM / (2 * n))


def mean_bound(x: torch.Tensor, p: float) -> float:
    """eps with P(|mean(out) - mean(x)| >= eps) <= FALSE_FAILURE: out_i - x_i =
    x_i (B_i / (1 - p) - 1), B_i ~ Bernoulli(1 - p) independent, lies in an interval of width
    |x_i| / (1 - p), so t = sqrt(ln(2 / delta) / 2 * sum x_i^2) / (1 - p) bounds the sum."""
    x = x.detach().to("cpu", torch.float64)
    return math.sqrt(LOG_TERM / 2 * float((x * x).sum())) / (1 - p) / x.numel()


# ---------------------------------------------------------------- shared comparisons


def expect_zero_or_scaled(out, x, p, *, what, device, dtype=None):
    """Every element of out is exactly 0 or x / (1 - p), within dtype's tolerance against
    float64 (torch's own x * (1 / (1 - p)) in dtype is the baseline). x has no zeros."""
    dtype = dtype or x.dtype
    checks.expect_tensor(out, shape=x.shape, dtype=dtype, device=device, what=what)
    if out.isnan().any():
        raise checks.Wrong(f"{what} returned nan at {int(out.isnan().sum())} of {out.numel()} elements")
    kept = out.detach().cpu() != 0
    want = torch.where(kept, golden(x) / (1 - p), 0.0)
    baseline = torch.where(kept, (x * (1 / (1 - p))).cpu(), 0.0)
    expect_close(out, want, what=f"{what} (kept elements must be x / (1 - p) = x * {1 / (1 - p):.4g})", dtype=dtype,
                 device=device, baseline=baseline)  # fmt: skip
    return kept


def expect_kept_fraction(kept, p, *, what):
    n = kept.numel()
    frac = kept.double().mean().item()
    eps = kept_fraction_bound(n)
    if abs(frac - (1 - p)) > eps:
        raise checks.Wrong(
            f"{what} kept {frac:.4f} of {n} elements; with p={p:g} the kept fraction must be 1 - p = {1 - p:.4f} "
            f"+- {eps:.4f} (a bound a correct dropout exceeds with probability below {FALSE_FAILURE:g})"
        )


def expect_identity(out, x, *, what, device):
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    if not torch.equal(out.cpu(), x.cpu()):
        changed = int((out.cpu() != x.cpu()).sum())
        raise checks.Wrong(f"{what} changed {changed} of {x.numel()} elements; it must return x unchanged")


# ---------------------------------------------------------------- values


SCALE_CASES = {
    "p=0.1": ((64, 64), 0.1, False),
    "p=0.5": ((64, 64), 0.5, False),
    "p=0.8": ((64, 64), 0.8, False),
    "4d_p=0.3": ((2, 3, 8, 8), 0.3, False),
    "non_contiguous_p=0.4": ((32, 48), 0.4, True),
    "float64_p=0.25": ((32, 32), 0.25, False),
}


@pytest.mark.parametrize("case", list(SCALE_CASES))
def test_kept_values_scaled_by_one_over_keep_probability(drop, device, case):
    """Inverted dropout: each element is 0 or x / (1 - p), never x itself or x * (1 - p)."""
    shape, p, transpose = SCALE_CASES[case]
    dtype = torch.float64 if case.startswith("float64") else torch.float32
    x = positive_x(*shape, seed=1, device=device, dtype=dtype)
    if transpose:
        x = x.t()
    g = gen(11, device)
    what = describe_call("dropout", x, p=p, generator=g)
    out = rules.call(drop.dropout, x, p, what=what, generator=g)
    kept = expect_zero_or_scaled(out, x, p, what=what, device=device)
    if kept.all() or not kept.any():
        raise checks.Wrong(f"{what} {'kept' if kept.all() else 'dropped'} every one of the {x.numel()} elements")


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_kept_fraction_within_bound(drop, device, p):
    """The kept fraction of 65536 elements is 1 - p within +-0.0105: Hoeffding,
    2 exp(-2 n eps^2) = 1e-6 with n = 65536, so a correct dropout fails with probability
    below 1e-6 (keeping with probability p instead of 1 - p is 0.2 to 0.5 away)."""
    x = positive_x(256, 256, seed=2, device=device)
    g = gen(12, device)
    what = describe_call("dropout", x, p=p, generator=g)
    out = rules.call(drop.dropout, x, p, what=what, generator=g)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    expect_kept_fraction(out.cpu() != 0, p, what=what)


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_mean_matches_input(drop, device, p):
    """E[out] = x: the mean of out over 65536 elements is x's mean within a Hoeffding bound
    (0.020 at p = 0.2, 0.040 at p = 0.6 for x in [1, 2)) exceeded with probability below 1e-6."""
    x = positive_x(256, 256, seed=3, device=device)
    g = gen(13, device)
    what = describe_call("dropout", x, p=p, generator=g)
    out = rules.call(drop.dropout, x, p, what=what, generator=g)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    got, want, eps = out.double().mean().item(), x.double().mean().item(), mean_bound(x, p)
    if abs(got - want) > eps:
        raise checks.Wrong(
            f"{what}: the mean of the output is {got:.4f}, x's is {want:.4f}; inverted dropout keeps the mean "
            f"(within +-{eps:.4f}, a bound a correct dropout exceeds with probability below {FALSE_FAILURE:g})"
        )


def test_each_element_dropped_independently(drop, device):
    """One draw per element: no two neighbouring rows or columns of a (128, 128) mask are
    identical. With p = 0.5 a correct dropout makes a given pair identical with probability
    2^-128, so the 254 pairs fail it with probability below 254 * 2^-128 = 7e-37."""
    x = positive_x(128, 128, seed=4, device=device)
    g = gen(14, device)
    what = describe_call("dropout", x, p=0.5, generator=g)
    out = rules.call(drop.dropout, x, 0.5, what=what, generator=g)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    kept = out.cpu() != 0
    for axis, name in ((0, "rows"), (1, "columns")):
        a, b = (kept[:-1], kept[1:]) if axis == 0 else (kept[:, :-1], kept[:, 1:])
        same = (a == b).all(dim=1 - axis)
        if same.any():
            raise checks.Wrong(
                f"{what}: {int(same.sum())} of {len(same)} pairs of neighbouring {name} have identical masks; "
                "draw one random number per element of x (a mask of x's shape), not one per row or column"
            )


@pytest.mark.parametrize("p", [0.5, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_eval_is_identity(drop, device, p, dtype):
    """training=False returns x unchanged, whatever p (1 included): no mask, no scaling."""
    checks.need_dtype(dtype, device)
    x = positive_x(16, 16, seed=5, device=device, dtype=dtype)
    what = describe_call("dropout", x, p=p, training=False)
    expect_identity(rules.call(drop.dropout, x, p, False, what=what), x, what=what, device=device)


def test_p_zero_keeps_everything(drop, device):
    """p = 0 in training keeps every element, unscaled: out equals x exactly."""
    x = positive_x(64, 64, seed=6, device=device)
    g = gen(16, device)
    what = describe_call("dropout", x, p=0.0, generator=g)
    expect_identity(rules.call(drop.dropout, x, 0.0, what=what, generator=g), x, what=what, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_p_one_drops_everything(drop, device, dtype):
    """p = 1 drops every element: all zeros, in x's dtype, never nan (no 0 * 1 / 0)."""
    checks.need_dtype(dtype, device)
    x = positive_x(32, 32, seed=7, device=device, dtype=dtype)
    g = gen(17, device)
    what = describe_call("dropout", x, p=1.0, generator=g)
    out = rules.call(drop.dropout, x, 1.0, what=what, generator=g)
    checks.expect_tensor(out, shape=x.shape, dtype=dtype, device=device, what=what)
    if not (out.cpu() == 0).all():
        bad = out.cpu()[out.cpu() != 0]
        raise checks.Wrong(f"{what}: {bad.numel()} of {x.numel()} elements are not 0 (e.g. {bad[0].item()}); p=1 drops everything")


INVALID_CASES = [("dropout", -0.1, True), ("dropout", 1.5, True), ("dropout", 1.5, False), ("Dropout", -0.1, None), ("Dropout", 1.5, None)]


@pytest.mark.parametrize("fn, p, training", INVALID_CASES, ids=[f"{f}-p={p:g}" + ("-eval" if t is False else "") for f, p, t in INVALID_CASES])
def test_invalid_p_raises(drop, device, fn, p, training):
    """A probability outside [0, 1] raises ValueError (as torch's), in eval too and when the module is built."""
    if fn == "Dropout":
        rules.expect_raises(ValueError, drop.Dropout, p, what=f"Dropout({p:g})")
        return
    x = positive_x(4, 4, seed=8, device=device)
    what = describe_call("dropout", x, p=p, training=training)
    rules.expect_raises(ValueError, drop.dropout, x, p, training, what=what)


# ---------------------------------------------------------------- randomness


def test_same_generator_state_same_mask(drop, device):
    """Generators seeded alike give the same output, whatever the global generator's state
    (reseeded differently before each call); a generator seeded differently gives another."""
    x = positive_x(32, 32, seed=9, device=device)
    what = describe_call("dropout", x, p=0.5, generator="torch.Generator().manual_seed(7)")
    outs = []
    for global_seed in (1, 2):
        checks.seed_executor(drop.dropout, global_seed)
        outs.append(rules.call(drop.dropout, x, 0.5, what=what, generator=gen(7, device)))
    checks.expect_tensor(outs[0], shape=x.shape, dtype=x.dtype, device=device, what=what)
    if not torch.equal(outs[0], outs[1]):
        differ = int((outs[0] != outs[1]).sum())
        raise checks.Wrong(f"{what} twice, with generators seeded alike, gave different masks ({differ} of {x.numel()} "
                           "elements differ): draw every random number from `generator`")  # fmt: skip
    other = rules.call(drop.dropout, x, 0.5, what=what, generator=gen(8, device))
    if torch.equal(other, outs[0]):
        raise checks.Wrong(f"{what} gave the same mask for generators seeded 7 and 8: is the mask drawn from `generator`?")


def test_global_generator_when_none(drop, device):
    """generator=None draws from torch's global generator: the same torch.manual_seed gives
    the same mask, another seed another, and a second call without reseeding a fresh one."""
    x = positive_x(32, 32, seed=10, device=device)
    what = describe_call("dropout", x, p=0.5)
    checks.seed_executor(drop.dropout, 3)
    first = rules.call(drop.dropout, x, 0.5, what=what)
    checks.seed_executor(drop.dropout, 3)
    again = rules.call(drop.dropout, x, 0.5, what=what)
    following = rules.call(drop.dropout, x, 0.5, what=what)
    checks.seed_executor(drop.dropout, 4)
    other = rules.call(drop.dropout, x, 0.5, what=what)
    checks.expect_tensor(first, shape=x.shape, dtype=x.dtype, device=device, what=what)
    if not torch.equal(first, again):
        raise checks.Wrong(f"{what} after torch.manual_seed(3), twice, gave different masks: with generator=None, "
                           "draw from torch's global generator (torch.rand(..., generator=None))")  # fmt: skip
    if torch.equal(following, again) or torch.equal(other, first):
        when = "two calls in a row" if torch.equal(following, again) else "torch.manual_seed(3) and torch.manual_seed(4)"
        raise checks.Wrong(f"{what} gave the same mask for {when}: a fixed seed or a fresh torch.Generator() per call? "
                           "Draw from the global generator, which advances with every draw")  # fmt: skip


# ---------------------------------------------------------------- gradients


GRADIENT_CASES = {"p=0.3": (0.3, True), "p=0.7": (0.7, True), "p=0": (0.0, True), "p=1": (1.0, True), "eval": (0.5, False)}


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_gradients_masked_and_scaled(drop, device, case):
    """The gradient of x is upstream * mask / (1 - p), with the mask the output shows
    (out != 0): dropped elements get 0, kept ones the same 1 / (1 - p); in eval, upstream."""
    p, training = GRADIENT_CASES[case]
    x = positive_x(16, 32, seed=11, device=device)
    upstream = checks.randn(16, 32, seed=99, device=device)
    leaf = x.clone().requires_grad_()
    g = gen(21, device)
    what = describe_call("dropout", x, p=p, training=training, generator=g)
    out = rules.call(drop.dropout, leaf, p, training, what=what, backward=upstream, generator=g)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    if not out.requires_grad or leaf.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches x; is the output computed under no_grad or detached?")
    if not training:
        scale = torch.ones_like(golden(x))
    else:
        scale = (out.detach().cpu() != 0).double() * (1 / (1 - p) if p < 1 else 0.0)
    want = golden(upstream) * scale
    expect_close(leaf.grad, want, what=f"the gradient of x through {what}", dtype=x.dtype, device=device,
                 baseline=(upstream.cpu() * scale.float()))  # fmt: skip


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision(drop, device, dtype):
    """bfloat16 and float16 in, the same dtype out (a float32 mask tensor promotes them),
    kept values x / (1 - p) within 4x torch's own error for x * (1 / (1 - p)) in that dtype."""
    checks.need_dtype(dtype, device)
    x = positive_x(64, 64, seed=12, device=device, dtype=dtype)
    g = gen(22, device)
    what = describe_call("dropout", x, p=0.3, generator=g)
    out = rules.call(drop.dropout, x, 0.3, what=what, generator=g)
    expect_zero_or_scaled(out, x, 0.3, what=what, device=device, dtype=dtype)


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("p", [None, 0.3], ids=["default", "p=0.3"])
def test_dropout_module_layout(drop, p):
    """Dropout(p) is an nn.Module with p stored as given (0.5 by default), and nothing to train or save."""
    what = "Dropout()" if p is None else f"Dropout({p:g})"
    m = rules.call(drop.Dropout, what=what) if p is None else rules.call(drop.Dropout, p, what=what)
    if not checks.is_instance(m, nn.Module):
        raise checks.Wrong(f"{what} is a {checks.type_name(m)}, not an nn.Module")
    want = 0.5 if p is None else p
    got = m.p
    if not isinstance(got, (int, float)) or got != want:
        raise checks.Wrong(f"{what}.p is {got!r}, expected {want:g}")
    params, state = [n for n, _ in m.named_parameters()], list(m.state_dict())
    if params or state:
        raise checks.Wrong(f"{what} has parameters {params} and state_dict keys {state}; dropout has none")


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_module_drops_in_training(drop, device, p):
    """A fresh module is in training mode: its forward drops with its own p (kept fraction
    within the Hoeffding bound of test_kept_fraction_within_bound) and scales by 1 / (1 - p)."""
    m = rules.call(drop.Dropout, p, what=f"Dropout({p:g})")
    x = positive_x(256, 256, seed=13, device=device)
    what = describe_call(f"Dropout({p:g})", x) + " (training)"
    checks.seed_executor(drop.Dropout, 5)
    out = rules.call(m, x, what=what)
    kept = expect_zero_or_scaled(out, x, p, what=what, device=device)
    expect_kept_fraction(kept, p, what=what)


def test_dropout_module_follows_train_and_eval(drop, device):
    """After .eval() the module passes x through; after .train() it drops again."""
    m = rules.call(drop.Dropout, 0.5, what="Dropout(0.5)")
    x = positive_x(64, 64, seed=14, device=device)
    rules.call(m.eval, what="Dropout(0.5).eval()")
    what = describe_call("Dropout(0.5)", x) + " after .eval()"
    expect_identity(rules.call(m, x, what=what), x, what=what, device=device)
    rules.call(m.train, what="Dropout(0.5).train()")
    what = describe_call("Dropout(0.5)", x) + " after .eval() then .train()"
    out = rules.call(m, x, what=what)
    kept = expect_zero_or_scaled(out, x, 0.5, what=what, device=device)
    if kept.all():
        raise checks.Wrong(f"{what} kept every element: in train mode it must drop")
