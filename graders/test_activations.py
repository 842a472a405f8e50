"""Grader for the activations kata: relu, gelu (exact and tanh), silu, softplus, softmax and
log_softmax.

Every value is checked against torch's own function (torch.nn.functional) computed in
float64: on ordinary inputs, non-contiguous views, float64, a wide sweep across softplus's
threshold and float16's overflow, exact zeros and infinities, empty tensors, every dim of
a softmax (negative too) with masked (-inf) logits, and the dtype= argument. Stability:
inputs of +-1000 (logits times 1000) give torch's finite values and finite gradients.
Gradients of x against torch's autograd (relu's is 0 at exactly 0). bfloat16 and float16
against torch's own error in that dtype. Rules on every call: no fused activation,
softmax or logsumexp at the aten level; x unmodified; gelu's unknown approximate raises.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("activations")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def act(impl):
    return impl.load("activations")


# ---------------------------------------------------------------- the functions

# op id -> (the function's name, fixed keyword arguments): gelu is graded in both forms.
OPS = {
    "relu": ("relu", {}),
    "gelu": ("gelu", {}),
    "gelu_tanh": ("gelu", {"approximate": "tanh"}),
    "silu": ("silu", {}),
    "softplus": ("softplus", {}),
    "softmax": ("softmax", {}),
    "log_softmax": ("log_softmax", {}),
}
ELEMENTWISE = ["relu", "gelu", "gelu_tanh", "silu", "softplus"]
ALONG_DIM = ["softmax", "log_softmax"]
TORCH = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "softmax": F.softmax, "log_softmax": F.log_softmax}


# ---------------------------------------------------------------- inputs


def make_x(*shape, seed, device, dtype=torch.float32, scale=1.0):
    """Seeded normal values times scale, rounded once to dtype (the golden starts from them)."""
    return randn(*shape, seed=seed, device="cpu", dtype=torch.float64, scale=scale).to(device=device, dtype=dtype)


def wide(device, dtype=torch.float32):
    """-30 to 30 in steps of 0.5 (0 exactly included): both sides of softplus's threshold
    (20, and beta * x for other betas) and float16's exp overflow above 11."""
    return torch.linspace(-30, 30, 121, dtype=torch.float64).to(device=device, dtype=dtype)


def zeros_and_infinities(device, dtype=torch.float32):
    values = [0.0, -0.0, float("inf"), -float("inf"), 1e-30, -1e-30, 1000.0, -1000.0, 3.5, -3.5]
    return torch.tensor(values, dtype=dtype, device=device)


def elementwise_x(name: str, device, dtype=torch.float32):
    cases = {
        "3d": lambda: make_x(2, 3, 8, seed=1, device=device, dtype=dtype, scale=3.0),
        "non_contiguous": lambda: make_x(8, 6, seed=2, device=device, dtype=dtype, scale=3.0).t(),
        "float64": lambda: make_x(4, 8, seed=3, device=device, dtype=torch.float64, scale=3.0),
        "wide": lambda: wide(device, dtype),
        # |x| < 0.06: gelu ~ x / 2 + x^2 / sqrt(2 pi) in both forms, so a wrong constant shows
        # here and a missing x^3 term (1e-7 away) does not.
        "near_zero": lambda: make_x(4, 8, seed=6, device=device, dtype=dtype, scale=0.02),
        # Rounded to integers: many exact zeros, where relu's gradient is a choice (torch: 0).
        "integers": lambda: make_x(4, 8, seed=4, device=device, dtype=dtype, scale=2.0).round(),
        "zeros_and_infinities": lambda: zeros_and_infinities(device, dtype),
        # Beyond exp's range (float32 overflows above 88): exp(x) or exp(-x) is inf.
        "large": lambda: torch.cat([make_x(30, seed=5, device=device, dtype=dtype, scale=1000.0),
                                    torch.tensor([1000.0, -1000.0, 500.0, -500.0], dtype=dtype, device=device)]),
    }  # fmt: skip
    return cases[name]()


def along_dim_case(name: str, device, dtype=torch.float32):
    """(x, dim) for one named softmax / log_softmax case."""

    def x(*shape, seed, scale=2.0, dt=dtype):
        return make_x(*shape, seed=seed, device=device, dtype=dt, scale=scale)

    def masked():
        t = x(4, 6, seed=17)
        t[0, 1] = t[1, 0] = t[1, 5] = t[3, 2] = -float("inf")  # attention-style masked logits; no row fully masked
        return t

    cases = {
        "last_dim": lambda: (x(4, 7, seed=11), -1),
        "dim_0_3d": lambda: (x(5, 3, 4, seed=12), 0),
        "middle_dim": lambda: (x(3, 6, 4, seed=13), 1),
        "negative_dim_4d": lambda: (x(2, 5, 3, 4, seed=14), -3),
        "1d": lambda: (x(9, seed=15), 0),
        "non_contiguous": lambda: (x(6, 5, seed=16).t(), -1),
        "masked": lambda: (masked(), -1),
        "float64": lambda: (x(4, 7, seed=18, dt=torch.float64), -1),
        "normal": lambda: (x(4, 7, seed=19, scale=3.0), -1),
        "wide": lambda: (wide(device, dtype).reshape(11, 11), -1),
        # Logits times 1000: rows whose maxima differ by hundreds (a max over the whole
        # tensor leaves some rows all zeros), and exp(1000) is inf.
        "large": lambda: (x(4, 9, seed=20, scale=1000.0), -1),
    }
    return cases[name]()


# ---------------------------------------------------------------- shared comparisons


def expect_matches_torch(act, op: str, x, kwargs: dict, *, device, dtype=None, suffix=""):
    """The learner's op(x, **kwargs) under the rules, against torch's in float64 (and in
    x's dtype for the tolerance's baseline)."""
    name, fixed = OPS[op]
    kwargs = fixed | kwargs
    what = describe_call(name, x, **kwargs) + suffix
    got = rules.call(getattr(act, name), x, what=what, **kwargs)
    want = TORCH[name](golden(x), **kwargs)
    baseline = TORCH[name](x, **kwargs)
    expect_close(got, want, what=what, dtype=dtype or x.dtype, device=device, baseline=baseline)


def expect_input_gradient(act, op: str, x, kwargs: dict, *, device, suffix=""):
    """The gradient of x through the learner's call with a seeded upstream gradient,
    against torch's autograd in float64 (finite wherever torch's is)."""
    name, fixed = OPS[op]
    kwargs = fixed | kwargs
    what = describe_call(name, x, **kwargs) + suffix
    gx = golden(x).requires_grad_()
    want_out = TORCH[name](gx, **kwargs)
    upstream = randn(*x.shape, seed=99, device=device, dtype=x.dtype)
    (want,) = torch.autograd.grad(want_out, gx, golden(upstream))
    bx = x.detach().clone().requires_grad_()
    (base,) = torch.autograd.grad(TORCH[name](bx, **kwargs), bx, upstream)
    leaf = x.detach().clone().requires_grad_()
    out = rules.call(getattr(act, name), leaf, what=what, backward=upstream, **kwargs)
    checks.expect_tensor(out, shape=want_out.shape, dtype=x.dtype, device=device, what=what)
    if not out.requires_grad or leaf.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches x; is something detached?")
    expect_close(leaf.grad, want, what=f"the gradient of x through {what}", dtype=x.dtype, device=device, baseline=base)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("case", ["3d", "non_contiguous", "float64", "integers", "zeros_and_infinities"])
def test_relu_matches_torch(act, device, case):
    """relu(-inf) is 0 and relu(inf) inf: x * (x > 0) gives nan at -inf (-inf * 0)."""
    expect_matches_torch(act, "relu", elementwise_x(case, device), {}, device=device)


@pytest.mark.parametrize("case", ["3d", "non_contiguous", "float64", "wide", "near_zero"])
@pytest.mark.parametrize("op", ["gelu", "gelu_tanh"])
def test_gelu_matches_torch(act, device, op, case):
    """The exact form (erf) and the tanh form differ by up to 5e-4: each is checked against its own."""
    expect_matches_torch(act, op, elementwise_x(case, device), {}, device=device)


@pytest.mark.parametrize("case", ["3d", "non_contiguous", "float64", "wide"])
def test_silu_matches_torch(act, device, case):
    expect_matches_torch(act, "silu", elementwise_x(case, device), {}, device=device)


SOFTPLUS_CASES = {
    "default_3d": ("3d", {}),
    "default_wide": ("wide", {}),
    "float64": ("float64", {}),
    "zeros_and_infinities": ("zeros_and_infinities", {}),
    # beta != 1: the log is divided by beta.
    "beta_0.5": ("3d", {"beta": 0.5}),
    "beta_2": ("wide", {"beta": 2.0}),
    # torch's switch to the identity, exactly: with threshold 1, softplus(2) is 2, not 2.127.
    "threshold_1": ("wide", {"threshold": 1.0}),
    # The threshold is compared with beta * x: identity for x in (2.5, 30] here, not (5, 30].
    "beta_2_threshold_5": ("wide", {"beta": 2.0, "threshold": 5.0}),
}


@pytest.mark.parametrize("case", list(SOFTPLUS_CASES))
def test_softplus_matches_torch(act, device, case):
    x_case, kwargs = SOFTPLUS_CASES[case]
    expect_matches_torch(act, "softplus", elementwise_x(x_case, device), kwargs, device=device)


DIM_CASES = ["last_dim", "dim_0_3d", "middle_dim", "negative_dim_4d", "1d", "non_contiguous", "masked", "float64"]


@pytest.mark.parametrize("case", DIM_CASES)
@pytest.mark.parametrize("op", ALONG_DIM)
def test_softmax_matches_torch(act, device, op, case):
    """softmax and log_softmax along every kind of dim; masked (-inf) logits get probability 0."""
    x, dim = along_dim_case(case, device)
    expect_matches_torch(act, op, x, {"dim": dim}, device=device)


DTYPE_CASES = {
    # Half logits, a float32 softmax (attention's F.softmax(scores, -1, dtype=torch.float32)).
    "bfloat16_to_float32": (torch.bfloat16, torch.float32, 4.0),
    "float16_to_float32": (torch.float16, torch.float32, 4.0),
    # float64 out means float64 accuracy: x converted first, not the float32 result.
    "float32_to_float64": (torch.float32, torch.float64, 10.0),
}


@pytest.mark.parametrize("case", list(DTYPE_CASES))
@pytest.mark.parametrize("op", ALONG_DIM)
def test_dtype_argument(act, device, op, case):
    """dtype= converts x before anything is computed: the result is in dtype, with dtype's accuracy."""
    x_dtype, dtype, scale = DTYPE_CASES[case]
    checks.need_dtype(x_dtype, device)
    x = make_x(4, 7, seed=21, device=device, dtype=x_dtype, scale=scale)
    what = describe_call(op, x, dim=-1, dtype=dtype)
    got = rules.call(getattr(act, op), x, -1, what=what, dtype=dtype)
    want = TORCH[op](golden(x), -1)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=TORCH[op](x, -1, dtype=dtype))


@pytest.mark.parametrize("op", [*ELEMENTWISE, *ALONG_DIM])
def test_empty_input(act, device, op):
    """A batch of no rows: an empty result of x's shape and dtype, no error."""
    for shape in [(0, 5), (2, 0, 3)]:
        x = torch.empty(shape, device=device)
        kwargs = {"dim": -1} if op in ALONG_DIM else {}
        name, fixed = OPS[op]
        what = describe_call(name, x, **(fixed | kwargs))
        got = rules.call(getattr(act, name), x, what=what, **(fixed | kwargs))
        checks.expect_tensor(got, shape=shape, dtype=x.dtype, device=device, what=what)


@pytest.mark.parametrize("approximate", ["exact", "sigmoid"])
def test_gelu_rejects_unknown_approximate(act, device, approximate):
    """Only "none" and "tanh" exist: another string is a mistake, not a request for the exact form."""
    x = make_x(3, 4, seed=22, device=device)
    what = describe_call("gelu", x, approximate=approximate)
    rules.expect_raises(ValueError, act.gelu, x, what=what, approximate=approximate)


# ---------------------------------------------------------------- gradients


GRADIENT_CASES = [
    ("relu", "3d", {}), ("relu", "integers", {}), ("gelu", "3d", {}), ("gelu", "integers", {}), ("gelu_tanh", "3d", {}),
    ("silu", "3d", {}), ("softplus", "3d", {}), ("softplus", "integers", {}), ("softplus", "wide", {"beta": 2.0, "threshold": 5.0}),
    ("softplus", "wide", {"threshold": 1.0}),
]  # fmt: skip
GRADIENT_IDS = [f"{op}-{case}" + "".join(f"-{k}={v:g}" for k, v in kw.items()) for op, case, kw in GRADIENT_CASES]


@pytest.mark.parametrize("op, case, kwargs", GRADIENT_CASES, ids=GRADIENT_IDS)
def test_gradients_match_torch(act, device, op, case, kwargs):
    """The gradient of x, as training sees it, at ties too: relu's is 0 at x == 0 exactly
    (torch's choice; clamp's gradient there is 1, maximum's 0.5), softplus's is 0.5 at 0
    (integers: many exact zeros) and the smooth branch's at beta * x == threshold exactly
    (the wide sweeps hit it: minimum's gradient there is halved)."""
    expect_input_gradient(act, op, elementwise_x(case, device), kwargs, device=device)


@pytest.mark.parametrize("case", ["middle_dim", "masked", "last_dim"])
@pytest.mark.parametrize("op", ALONG_DIM)
def test_softmax_gradients_match_torch(act, device, op, case):
    """The gradient flows through the normaliser (the sum) too: detaching it is wrong."""
    x, dim = along_dim_case(case, device)
    expect_input_gradient(act, op, x, {"dim": dim}, device=device)


# ---------------------------------------------------------------- stability


def large_case(op, device, dtype=torch.float32):
    if op in ALONG_DIM:
        x, dim = along_dim_case("large", device, dtype)
        return x, {"dim": dim}
    return elementwise_x("large", device, dtype), {}


@pytest.mark.parametrize("op", [*ELEMENTWISE, *ALONG_DIM])
def test_stable_at_large_inputs(act, device, op):
    """Inputs of +-1000 (logits times 1000): exp overflows to inf beyond 88 in float32, so
    log(1 + exp(x)), exp(x) / sum(exp(x)) and log(softmax(x)) give inf, nan or -inf where
    torch's are finite."""
    x, kwargs = large_case(op, device)
    expect_matches_torch(act, op, x, kwargs, device=device, suffix=" (inputs of +-1000)")


@pytest.mark.parametrize("op", [*ELEMENTWISE, *ALONG_DIM])
def test_gradients_stable_at_large_inputs(act, device, op):
    """The gradient at +-1000 is finite too: a torch.where whose unused branch overflows,
    or a sigmoid built from exp(-x), has the right value but a nan gradient."""
    x, kwargs = large_case(op, device)
    expect_input_gradient(act, op, x, kwargs, device=device, suffix=" (inputs of +-1000)")


# ---------------------------------------------------------------- half precision


# Ops that may return a half-precision tensor without computing in it: conversions,
# copies and allocations (the final .to(x.dtype) is aten._to_copy).
HALF_OK = frozenset(
    "aten." + name
    for name in ("_to_copy", "copy_", "clone", "detach", "alias", "lift_fresh", "empty", "empty_like", "empty_strided",
                 "new_empty", "new_empty_strided", "zeros", "zeros_like", "ones_like", "full", "full_like", "scalar_tensor")
)  # fmt: skip
HALF = (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("op", ["gelu", "gelu_tanh", "silu", "softplus", "softmax", "log_softmax"])
def test_computed_in_float32(act, device, op, dtype):
    """The docstrings promise half precision computed in float32, as torch does. Values
    alone cannot always show it (torch's own error sets the tolerance at the largest
    element, so a bfloat16 gelu passes), so the ops do: no op but a conversion, copy or
    allocation returns a bfloat16 or float16 tensor. (relu is exact in any dtype: exempt.)"""
    checks.need_dtype(dtype, device)
    if op in ALONG_DIM:
        x, dim = along_dim_case("normal", device, dtype)
        kwargs = {"dim": dim}
    else:
        x, kwargs = elementwise_x("3d", device, dtype), {}
    name, fixed = OPS[op]
    kwargs = fixed | kwargs
    what = describe_call(name, x, **kwargs)
    ops = rules.record_ops(getattr(act, name), x, **kwargs)
    for o in ops:
        if o.is_view or o.name in HALF_OK:
            continue
        half = next((t.dtype for t in o.outputs if t.dtype in HALF), None)
        if half is not None:
            raise checks.Wrong(
                f"{what} computes {o.name} in {str(half).removeprefix('torch.')}: convert x to float32 first "
                "(x.to(torch.promote_types(x.dtype, torch.float32))), compute, and convert the result back at the end"
            )


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("case", ["normal", "wide", "large"])
@pytest.mark.parametrize("op", [*ELEMENTWISE, *ALONG_DIM])
def test_low_precision(act, device, op, case, dtype):
    """bfloat16 and float16 in, the same dtype out, within 4x torch's own error in that
    dtype (torch computes them in float32): float16's exp overflows above 11, inside
    softplus's threshold."""
    checks.need_dtype(dtype, device)
    if op in ALONG_DIM:
        x, dim = along_dim_case(case, device, dtype)
        kwargs = {"dim": dim}
    else:
        x, kwargs = elementwise_x("3d" if case == "normal" else case, device, dtype), {}
    expect_matches_torch(act, op, x, kwargs, device=device)
