"""Grader for the init kata: calculate_gain, fan_in_and_fan_out, xavier_uniform_,
xavier_normal_, kaiming_uniform_ and kaiming_normal_.

Gains and fans are compared with torch.nn.init's exactly (and its ValueErrors); the four
initialisers statistically against the distribution torch.nn.init draws from, its scale
(exact bounds for the uniform ones, the variance of the normal ones within a Chernoff band
of the chi-square) and its shape (a Kolmogorov-Smirnov distance bounded by the
Dvoretzky-Kiefer-Wolfowitz inequality), so that a correct implementation fails with
probability below 1e-6 over the whole grader, whatever way it draws its values (see
STATISTICS below). Also: in place on
tensors and Parameters (the same object back, still a trainable leaf), float64 and
bfloat16, conv weights (receptive field), the generator honoured, torch's global
generator used without one, kaiming's mode checked and zero-element tensors left alone,
one draw per call (op counts).

torch.nn.init is forbidden. Its tensor functions that dispatch through __torch_function__
(kaiming_uniform_, uniform_, ...) are caught by the kata's rules; the others (calculate_gain
takes no tensor, and xavier_normal_ and the fan helper never dispatch) cannot be seen by a
torch-function or dispatch mode, so every call into the learner's code runs through
`without_torch_init`, whose profile hook (kata.harness.CallWatch) sees every call into
torch.nn.init's code, however it was reached, and makes it a broken rule whatever the
learner's code caught.
"""

from __future__ import annotations

import math
import types
from functools import partial

import pytest
import torch
import torch.nn.init as torch_init
from torch import nn

from kata import checks, course, harness

TOPIC = course.get("init")
rules = checks.Rules(TOPIC.forbidden)
FUNCTIONS = ["xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]
KAIMING = ["kaiming_uniform_", "kaiming_normal_"]


@pytest.fixture(scope="module")
def init(impl):
    return impl.load("init")


# ---------------------------------------------------------------- torch.nn.init refused


# The code of every function torch.nn.init defines, by name: what without_torch_init forbids.
TORCH_INIT_CODE = {
    f.__code__: f"torch.nn.init.{name}"
    for name, f in vars(torch_init).items()
    if isinstance(f, types.FunctionType) and f.__module__ == torch_init.__name__
}


def without_torch_init(fn, *args, **kwargs):
    """fn(*args, **kwargs) with torch.nn.init forbidden (`from torch.nn.init import
    calculate_gain` included). Runs in the executor."""
    with harness.CallWatch(TORCH_INIT_CODE.get, ": build it from smaller ops"):
        return fn(*args, **kwargs)


def call(fn, *args, what: str, may_modify=(), **kwargs):
    """fn(*args, **kwargs) in the executor under the kata's rules, torch.nn.init refused."""
    return rules.call(without_torch_init, fn, *args, what=what, may_modify=may_modify, **kwargs)


def describe_call(name, *args, **kwargs):
    return checks.describe_call(name, *args, **kwargs)


# ---------------------------------------------------------------- calculate_gain

# name: (nonlinearity, param or "none") pairs, all of which one case checks.
GAIN_CASES = {
    "linear_and_conv": [(n, "none") for n in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                                              "conv_transpose3d")],  # fmt: skip
    "sigmoid": [("sigmoid", "none")],
    "tanh": [("tanh", "none")],
    "relu": [("relu", "none"), ("relu", 0.5)],  # param is leaky_relu's alone
    "leaky_relu_default": [("leaky_relu", "none"), ("leaky_relu", None)],
    "leaky_relu_slope": [("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5))],
    "leaky_relu_int_slope": [("leaky_relu", 1), ("leaky_relu", 0)],
    "selu": [("selu", "none")],
}


def gain_args(nonlinearity, param):
    return (nonlinearity,) if param == "none" else (nonlinearity, param)


@pytest.mark.parametrize("case", list(GAIN_CASES))
def test_calculate_gain_matches_torch(init, case):
    for nonlinearity, param in GAIN_CASES[case]:
        args = gain_args(nonlinearity, param)
        what = describe_call("calculate_gain", *args)
        try:
            got = call(init.calculate_gain, *args, what=what)
        except ValueError as exc:
            raise checks.Wrong(f"{what} raised ValueError ({exc}); torch accepts it") from None
        want = torch_init.calculate_gain(*args)
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise checks.Wrong(f"{what} returned {checks.describe(got)}, expected a Python number")
        if abs(got - want) > 1e-12 * max(1.0, abs(want)):
            raise checks.Wrong(f"{what} is {got!r}, expected {want!r}")


GAIN_REJECTED = {
    "unknown_name": ("gelu",),
    "capitalised_name": ("ReLU",),
    "bool_slope": ("leaky_relu", True),
    "string_slope": ("leaky_relu", "0.1"),
}


@pytest.mark.parametrize("case", list(GAIN_REJECTED))
def test_calculate_gain_rejects(init, case):
    """As torch: ValueError for a name it does not know, and for a slope that is not an int or float (a bool is not)."""
    args = GAIN_REJECTED[case]
    rules.expect_raises(ValueError, without_torch_init, init.calculate_gain, *args, what=describe_call("calculate_gain", *args))


# ---------------------------------------------------------------- fan_in_and_fan_out

FAN_CASES = {
    "linear": ((5, 3), torch.float32),
    "non_square": ((3, 7), torch.float32),
    "conv1d": ((4, 2, 5), torch.float32),
    "conv2d": ((16, 8, 3, 3), torch.float32),
    "conv3d": ((2, 3, 2, 4, 2), torch.bfloat16),
}


@pytest.mark.parametrize("case", list(FAN_CASES))
def test_fan_in_and_fan_out_matches_torch(init, case):
    shape, dtype = FAN_CASES[case]
    t = torch.zeros(shape, dtype=dtype)
    what = describe_call("fan_in_and_fan_out", t)
    got = call(init.fan_in_and_fan_out, t, what=what)
    want = torch_init._calculate_fan_in_and_fan_out(t)
    if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in got)):
        raise checks.Wrong(f"{what} returned {checks.describe(got)}, expected a tuple of two Python ints (fan_in, fan_out)")
    if tuple(got) != want:
        raise checks.Wrong(f"{what} is {tuple(got)}, expected (fan_in, fan_out) = {want}: fan_in = shape[1] * receptive field, "
                           "fan_out = shape[0] * receptive field, the receptive field being the product of shape[2:]")  # fmt: skip


@pytest.mark.parametrize("shape", [(6,), ()], ids=["1d", "0d"])
def test_fan_rejects_fewer_than_two_dims(init, shape):
    t = torch.zeros(shape)
    rules.expect_raises(ValueError, without_torch_init, init.fan_in_and_fan_out, t, what=describe_call("fan_in_and_fan_out", t))


# ---------------------------------------------------------------- the distributions
#
# STATISTICS. Each case fills one tensor of n values (a fixed seed: the same verdict on
# every run) and tests it against torch.nn.init's distribution, U(-b, b) or N(0, s^2), in two
# checks: its scale (test_*_scale) and its shape at the scale it has (test_*_shape), so a
# wrong standard deviation and a wrong family are told apart.
#   - Scale, uniform: no |value| above b (rounding to the dtype allowed), and the largest
#     |value| at least b (1 - delta): P(max < b (1 - delta)) = (1 - delta)^n <= exp(-n delta)
#     = ALPHA_MAX with delta = ln(1 / ALPHA_MAX) / n.
#   - Scale, normal: n * mean(v^2) / s^2 is chi-square with n degrees of freedom (the mean is
#     known, 0). Chernoff's bound gives, for every n, P(ratio >= 1 + t) <= exp(-n/2 (t -
#     ln(1 + t))) and P(ratio <= 1 - t) <= exp(-n/2 (-t - ln(1 - t))); each side ALPHA_VAR / 2.
#   - Shape: the Kolmogorov-Smirnov distance D_n between the values' empirical CDF and the
#     family's CDF at the sample's own scale (b^ = max |v|, or s^ = sqrt(mean(v^2))). Against
#     the true scale the Dvoretzky-Kiefer-Wolfowitz inequality (Massart's constant) gives
#     P(D_n > eps) <= 2 exp(-2 n eps^2) for every n: eps = sqrt(ln(2 / ALPHA_KS) / (2 n)).
#     Changing the scale from s to s^ moves a normal CDF by at most phi(1) (r - 1), r =
#     max(s^/s, s/s^) (since sup_y y phi(y) = phi(1)), and a uniform one by at most
#     (b / b^ - 1) / 2; outside the events the scale checks bound (probability ALPHA_VAR, or
#     ALPHA_MAX) r - 1 is at most the band's, so the threshold adds that.
# Rounding to the tensor's dtype (unit roundoff u: 2^-8 in bfloat16) moves each value by at
# most u |v|: the bounds widen by u, the KS distance by at most u (a CDF shift of at most
# u |x| f(x) <= u), the variance ratio by 2u + u^2.
# A correct implementation fails a scale case with probability at most 1e-8 and a shape case
# at most ALPHA_KS + max(ALPHA_VAR, ALPHA_MAX) = 2e-8: the 36 cases of the four checks
# (18 tensors each) together at most 18 * 3e-8 = 5.4e-7 < 1e-6.
ALPHA_MAX = 1e-9
ALPHA_KS = 1e-8
ALPHA_VAR = 1e-8
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
PHI_1 = math.exp(-0.5) / math.sqrt(2 * math.pi)  # the standard normal density at 1: max of y phi(y)


def _bisect(f, lo, hi):
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) else (lo, mid)
    return hi


def chi_square_band(n: int, alpha: float) -> tuple[float, float]:
    """(lo, hi) with P(chi2_n / n outside [lo, hi]) <= alpha by Chernoff's bound, each side alpha / 2."""
    target = math.log(2 / alpha) * 2 / n  # t - ln(1 + t) must reach this for the upper side
    hi = _bisect(lambda t: t - math.log1p(t) < target, 0.0, 100.0)
    lo = _bisect(lambda t: -t - math.log1p(-t) < target, 0.0, 1.0 - 1e-15)
    return 1 - lo, 1 + hi


def ks_distance(cdf_of_sorted: torch.Tensor) -> float:
    n = cdf_of_sorted.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.maximum(i / n - cdf_of_sorted, cdf_of_sorted - (i - 1) / n).max().item()


def flat(values: torch.Tensor):
    return values.detach().double().flatten(), UNIT_ROUNDOFF[values.dtype]


def max_delta(n: int) -> float:
    return math.log(1 / ALPHA_MAX) / n


def ks_eps(n: int) -> float:
    return math.sqrt(math.log(2 / ALPHA_KS) / (2 * n))


def summary(v, std) -> str:
    return f"mean {v.mean().item():.3g}, std {v.std().item():.5g} (torch's: 0, {std:.5g})"


def expect_uniform_scale(values: torch.Tensor, bound: float, *, what: str) -> None:
    v, u = flat(values)
    n, top = v.numel(), v.abs().max().item()
    if top > bound * (1 + max(u, 1e-6)):
        raise checks.Wrong(f"{what} has a value of magnitude {top:.6g}, above torch's bound {bound:.6g}; {summary(v, bound / 3**0.5)}")
    delta = max_delta(n)
    if top < bound * (1 - delta) * (1 - u):
        raise checks.Wrong(f"{what}: its {n} values reach only {top:.6g}; uniform draws in [-{bound:.6g}, {bound:.6g}] come within "
                           f"{delta:.2%} of the bound (probability of less: {ALPHA_MAX:g}); {summary(v, bound / 3**0.5)}")  # fmt: skip


def expect_normal_scale(values: torch.Tensor, std: float, *, what: str) -> None:
    v, u = flat(values)
    n = v.numel()
    lo, hi = chi_square_band(n, ALPHA_VAR)
    ratio = v.square().mean().item() / std**2
    slack = 2 * u + u * u
    if not lo * (1 - slack) <= ratio <= hi * (1 + slack):
        raise checks.Wrong(f"{what}: mean(v^2) / std^2 = {ratio:.4f} for torch's std {std:.5g}, outside [{lo:.4f}, {hi:.4f}] "
                           f"(probability below {ALPHA_VAR:g} for {n} draws of N(0, std^2)); {summary(v, std)}")  # fmt: skip


def expect_uniform_shape(values: torch.Tensor, *, what: str) -> None:
    v, u = flat(values)
    n = v.numel()
    top = v.abs().max().item()
    if top == 0:
        raise checks.Wrong(f"{what} is all zeros")
    ks = ks_distance(((v.sort().values + top) / (2 * top)).clamp(0, 1))
    delta = max_delta(n)
    eps = ks_eps(n) + (delta + u) / (2 * (1 - delta)) + u
    if ks > eps:
        raise checks.Wrong(f"{what} does not look uniform (at its own bound {top:.5g}): Kolmogorov-Smirnov distance {ks:.4f} > {eps:.4f} "
                           f"(probability below {ALPHA_KS + ALPHA_MAX:g} for {n} uniform values)")  # fmt: skip


def expect_normal_shape(values: torch.Tensor, *, what: str) -> None:
    v, u = flat(values)
    n = v.numel()
    std = v.square().mean().sqrt().item()
    if std == 0:
        raise checks.Wrong(f"{what} is all zeros")
    ks = ks_distance(torch.special.ndtr(v.sort().values / std))
    lo, hi = chi_square_band(n, ALPHA_VAR)
    r = max(math.sqrt(hi), 1 / math.sqrt(lo)) * (1 + 2 * u) - 1
    eps = ks_eps(n) + PHI_1 * r + u
    if ks > eps:
        raise checks.Wrong(f"{what} does not look normal (at its own std {std:.5g}): Kolmogorov-Smirnov distance {ks:.4f} > {eps:.4f} "
                           f"(probability below {ALPHA_KS + ALPHA_VAR:g} for {n} normal values)")  # fmt: skip


def torch_std(fn_name: str, shape, kwargs: dict) -> float:
    """The standard deviation torch.nn.init's fn gives a tensor of this shape."""
    fan_in, fan_out = torch_init._calculate_fan_in_and_fan_out(torch.empty(shape, device="meta"))
    if fn_name.startswith("xavier"):
        return kwargs.get("gain", 1.0) * math.sqrt(2.0 / (fan_in + fan_out))
    fan = fan_in if kwargs.get("mode", "fan_in") == "fan_in" else fan_out
    return torch_init.calculate_gain(kwargs.get("nonlinearity", "leaky_relu"), kwargs.get("a", 0)) / math.sqrt(fan)


def expect_scale(values, fn_name, shape, kwargs, *, what):
    std = torch_std(fn_name, shape, kwargs)
    if fn_name.endswith("uniform_"):
        expect_uniform_scale(values, math.sqrt(3.0) * std, what=what)
    else:
        expect_normal_scale(values, std, what=what)


def expect_shape(values, fn_name, *, what):
    if fn_name.endswith("uniform_"):
        expect_uniform_shape(values, what=what)
    else:
        expect_normal_shape(values, what=what)


def fill(init, fn_name, shape, dtype=torch.float32, **kwargs):
    """(what the learner's fn returned, its description) for a fresh zero tensor of this shape."""
    t = torch.zeros(shape, dtype=dtype)
    what = describe_call(fn_name, t, **kwargs)
    got = call(getattr(init, fn_name), t, what=what, may_modify=(t,), **kwargs)
    checks.expect_tensor(got, shape=shape, dtype=dtype, device="cpu", what=what)
    return got, what


XAVIER_CASES = {
    "linear": ((256, 512), torch.float32, {}),
    "conv_tanh_gain": ((64, 32, 3, 3), torch.float32, {"gain": 5 / 3}),
    "float64": ((128, 192), torch.float64, {"gain": 0.5}),
    "bfloat16": ((128, 192), torch.bfloat16, {}),
}

KAIMING_CASES = {
    "default": ((256, 512), torch.float32, {}),
    "fan_out_relu": ((256, 512), torch.float32, {"mode": "fan_out", "nonlinearity": "relu"}),
    # nn.Linear's and nn.Conv2d's own initialisation: gain sqrt(2 / (1 + 5)).
    "conv_a_sqrt5": ((64, 32, 3, 3), torch.float32, {"a": math.sqrt(5)}),
    "tanh_float64": ((128, 192), torch.float64, {"nonlinearity": "tanh"}),
    "bfloat16": ((128, 192), torch.bfloat16, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("case", list(XAVIER_CASES))
@pytest.mark.parametrize("fn", ["xavier_uniform_", "xavier_normal_"])
def test_xavier_scale(init, fn, case):
    """torch's bound (uniform, exactly) or standard deviation (normal, within a chi-square band)."""
    shape, dtype, kwargs = XAVIER_CASES[case]
    got, what = fill(init, fn, shape, dtype, **kwargs)
    expect_scale(got, fn, shape, kwargs, what=what)


@pytest.mark.parametrize("case", list(XAVIER_CASES))
@pytest.mark.parametrize("fn", ["xavier_uniform_", "xavier_normal_"])
def test_xavier_shape(init, fn, case):
    """Uniform or normal, at whatever scale the values have (Kolmogorov-Smirnov)."""
    shape, dtype, kwargs = XAVIER_CASES[case]
    got, what = fill(init, fn, shape, dtype, **kwargs)
    expect_shape(got, fn, what=what)


@pytest.mark.parametrize("case", list(KAIMING_CASES))
@pytest.mark.parametrize("fn", KAIMING)
def test_kaiming_scale(init, fn, case):
    shape, dtype, kwargs = KAIMING_CASES[case]
    got, what = fill(init, fn, shape, dtype, **kwargs)
    expect_scale(got, fn, shape, kwargs, what=what)


@pytest.mark.parametrize("case", list(KAIMING_CASES))
@pytest.mark.parametrize("fn", KAIMING)
def test_kaiming_shape(init, fn, case):
    shape, dtype, kwargs = KAIMING_CASES[case]
    got, what = fill(init, fn, shape, dtype, **kwargs)
    expect_shape(got, fn, what=what)


# ---------------------------------------------------------------- in place, generators


def init_and_report(fn, tensor, **kwargs):
    """Run in the executor: whether fn(tensor) returned tensor itself, and tensor afterwards."""
    out = fn(tensor, **kwargs)
    return {"same": out is tensor, "tensor": tensor, "leaf": tensor.is_leaf, "parameter": isinstance(tensor, nn.Parameter)}


@pytest.mark.parametrize("kind", ["tensor", "parameter"])
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_fills_in_place_and_returns_the_tensor(init, fn, kind):
    """The tensor given is filled and returned, the same object; a Parameter that requires
    grad stays a trainable leaf (the draw runs under torch.no_grad())."""
    t = torch.zeros(32, 16)
    if kind == "parameter":
        t = nn.Parameter(t)
    what = describe_call(fn, t)
    try:
        report = call(init_and_report, getattr(init, fn), t, what=what, may_modify=(t,))
    except RuntimeError as exc:
        if isinstance(exc, NotImplementedError):
            raise
        raise checks.Wrong(f"{what} raised {getattr(exc, 'remote_type', type(exc).__name__)}: {str(exc).splitlines()[0][:200]} "
                           "(an in-place draw on a Parameter that requires grad needs torch.no_grad())") from None  # fmt: skip
    if not report["same"]:
        raise checks.Wrong(f"{what} returned a different tensor: fill the tensor given in place and return it")
    filled = report["tensor"]
    if not filled.any() or filled.unique().numel() < filled.numel() // 2:
        raise checks.Wrong(f"{what} left the tensor given {'all zeros' if not filled.any() else 'mostly unfilled'}: fill it in place")
    if kind == "parameter" and not (report["parameter"] and report["leaf"] and filled.requires_grad):
        raise checks.Wrong(f"after {what}, the Parameter is no longer a trainable leaf: draw under torch.no_grad()")


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_generator_is_honoured(init, fn):
    """The same generator state gives the same values; another seed gives others."""
    draws = {}
    for label, seed in (("first", 11), ("again", 11), ("other", 12)):
        g = torch.Generator().manual_seed(seed)
        got, what = fill(init, fn, (32, 16), generator=g)
        draws[label] = got
    what = f"{fn}(float32 (32, 16), generator=torch.Generator().manual_seed(s))"
    if not torch.equal(draws["first"], draws["again"]):
        raise checks.Wrong(f"{what} gave different values for the same seed 11 twice: draw from `generator` "
                           "(tensor.uniform_(..., generator=generator))")  # fmt: skip
    if torch.equal(draws["first"], draws["other"]):
        raise checks.Wrong(f"{what} gave the same values for seeds 11 and 12: the generator is not used")


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_without_generator_uses_torch_global_generator(init, fn):
    """generator=None: after torch.manual_seed(s) the values repeat; calls in a row differ."""
    draws = []
    for reseed in (True, True, False):
        if reseed:
            checks.seed_executor(init, 99)
        draws.append(fill(init, fn, (32, 16))[0])
    what = f"{fn}(float32 (32, 16))"
    if not torch.equal(draws[0], draws[1]):
        raise checks.Wrong(f"{what} after torch.manual_seed(99), twice, gave different values: with generator=None, draw from "
                           "torch's global generator")  # fmt: skip
    if torch.equal(draws[1], draws[2]):
        raise checks.Wrong(f"{what} called twice in a row gave the same values: is a fresh torch.Generator() made on every call?")


def init_ops(init, fn, shape):
    t = torch.zeros(shape)
    return rules.count_ops(without_torch_init, getattr(init, fn), t, may_modify=(t,))


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_one_draw_per_call(init, fn):
    """The same aten ops for a (4, 3) tensor as for a (64, 48, 3): one draw for the whole tensor, not one per row."""
    checks.expect_same_op_count(
        partial(init_ops, init, fn, (4, 3)), partial(init_ops, init, fn, (64, 48, 3)),
        what=fn, small_desc="a (4, 3) tensor", large_desc="a (64, 48, 3) tensor",
    )  # fmt: skip


# ---------------------------------------------------------------- kaiming's edge cases


@pytest.mark.parametrize("fn", KAIMING)
def test_kaiming_rejects_an_unknown_mode(init, fn):
    t = torch.zeros(8, 4)
    rules.expect_raises(ValueError, without_torch_init, getattr(init, fn), t, mode="fan_avg", what=describe_call(fn, t, mode="fan_avg"),
                        may_modify=(t,))  # fmt: skip


@pytest.mark.parametrize("fn", KAIMING)
def test_kaiming_leaves_a_zero_element_tensor_alone(init, fn):
    """As torch: a tensor with no elements (here fan_in = 0) comes back unchanged, no error."""
    t = torch.zeros(4, 0)
    what = describe_call(fn, t)
    try:
        got = call(getattr(init, fn), t, what=what, may_modify=(t,))
    except ArithmeticError as exc:
        raise checks.Wrong(f"{what} raised {getattr(exc, 'remote_type', type(exc).__name__)}: {exc}; torch returns a tensor with "
                           "no elements unchanged (its fan may be 0)") from None  # fmt: skip
    checks.expect_tensor(got, shape=(4, 0), dtype=torch.float32, device="cpu", what=what)
