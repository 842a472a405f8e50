"""Grader for the losses kata: cross_entropy, binary_cross_entropy_with_logits, kl_div,
huber_loss and sigmoid_focal_loss.

Every value is checked against torch's own loss (torchvision's formula for the focal loss,
which torch does not have) computed in float64: across reductions, class weights, ignored
targets (a weighted mean divides by the weights of the kept targets), label smoothing
combined with both, probability targets, every target ignored (torch's nan), targets of
exactly zero (KL), logits scaled by 1000 (no inf or nan, in values or gradients) and
bfloat16/float16 inputs against torch's own error in that dtype. Gradients of the input
against torch's autograd. Rules on every call: no fused loss kernel and no softmax, at the
aten level; inputs unmodified; a reduction that does not exist raises ValueError.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("losses")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]
C = 5  # classes


@pytest.fixture(scope="module")
def losses(impl):
    return impl.load("losses")


# ---------------------------------------------------------------- torch's reference


def torch_kl_div(input, target, reduction="mean", log_target=False):
    with warnings.catch_warnings():  # reduction="mean" warns that it is not the KL divergence: this kata asks for it
        warnings.simplefilter("ignore")
        return F.kl_div(input, target, reduction=reduction, log_target=log_target)


def torch_bce_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction, pos_weight=pos_weight)


def torch_huber_loss(input, target, reduction="mean", delta=1.0):
    return F.huber_loss(input, target, reduction=reduction, delta=delta)


def focal_formula(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, written out (torchvision is not a dependency)."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


TORCH = {
    "cross_entropy": F.cross_entropy,
    "binary_cross_entropy_with_logits": torch_bce_with_logits,
    "kl_div": torch_kl_div,
    "huber_loss": torch_huber_loss,
    "sigmoid_focal_loss": focal_formula,
}


# ---------------------------------------------------------------- inputs


def labels(*shape, seed, device, ignored=(), ignore_value=-100):
    """Seeded class indices in [0, C), int64; positions `ignored` (flat indices) set to ignore_value."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, C, shape, generator=g)
    flat = t.view(-1)
    for i in ignored:
        flat[i] = ignore_value
    return t.to(device)


def class_weight(device, dtype=torch.float32):
    # Far from uniform, so a mean divided by a count instead of the weights is far off.
    return torch.tensor([0.2, 1.0, 3.0, 0.5, 2.0], dtype=dtype, device=device)


def probabilities(*shape, seed, device, dtype=torch.float32, dim=1):
    """A seeded distribution over dim (the class dim)."""
    return torch.softmax(randn(*shape, seed=seed, device="cpu", dtype=torch.float64) * 2, dim=dim).to(device=device, dtype=dtype)


def binary_targets(*shape, seed, device, dtype=torch.float32, soft=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    return (t if soft else t.round()).to(device=device, dtype=dtype)


def case(op: str, name: str, device, dtype=torch.float32, scale: float = 1.0):
    """(args, kwargs) for one named case of one loss; logits times `scale`."""

    def x(*shape, seed):
        return randn(*shape, seed=seed, device=device, dtype=dtype, scale=2.0 * scale)

    w = class_weight(device, dtype)
    if op == "cross_entropy":
        ignored = {"ignore": (1, 4), "ignore_3d": (0, 5, 6, 11)}
        ce = {
            # plain class indices
            "mean": ((x(6, C, seed=1), labels(6, seed=2, device=device)), {}),
            "sum": ((x(6, C, seed=1), labels(6, seed=2, device=device)), {"reduction": "sum"}),
            "none": ((x(6, C, seed=1), labels(6, seed=2, device=device)), {"reduction": "none"}),
            "3d_mean": ((x(3, C, 4, seed=3), labels(3, 4, seed=4, device=device)), {}),
            "4d_none": ((x(2, C, 3, 2, seed=5), labels(2, 3, 2, seed=6, device=device)), {"reduction": "none"}),
            "1d_unbatched": ((x(C, seed=7), labels(seed=8, device=device)), {}),
            "non_contiguous": ((x(C, 6, seed=9).t(), labels(6, seed=10, device=device)), {}),
            "weight_mean": ((x(6, C, seed=1), labels(6, seed=2, device=device)), {"weight": w}),
            "weight_none": ((x(6, C, seed=1), labels(6, seed=2, device=device)), {"weight": w, "reduction": "none"}),
            # ignored targets
            "ignore_mean": ((x(6, C, seed=11), labels(6, seed=12, device=device, ignored=ignored["ignore"])), {}),
            "ignore_none": ((x(6, C, seed=11), labels(6, seed=12, device=device, ignored=ignored["ignore"])), {"reduction": "none"}),
            # ignore_index a real class: only those targets drop out
            "ignore_index_2_mean": ((x(8, C, seed=13), labels(8, seed=14, device=device, ignored=(0, 3), ignore_value=2)), {"ignore_index": 2}),
            "weight_ignore_mean": ((x(6, C, seed=11), labels(6, seed=12, device=device, ignored=ignored["ignore"])), {"weight": w}),
            "weight_ignore_sum": ((x(6, C, seed=11), labels(6, seed=12, device=device, ignored=ignored["ignore"])), {"weight": w, "reduction": "sum"}),
            "weight_ignore_3d_mean": ((x(3, C, 4, seed=15), labels(3, 4, seed=16, device=device, ignored=ignored["ignore_3d"])), {"weight": w}),
            # label smoothing
            "smoothing_mean": ((x(6, C, seed=17), labels(6, seed=18, device=device)), {"label_smoothing": 0.2}),
            "smoothing_none": ((x(6, C, seed=17), labels(6, seed=18, device=device)), {"label_smoothing": 0.2, "reduction": "none"}),
            "smoothing_weight_mean": ((x(6, C, seed=17), labels(6, seed=18, device=device)), {"weight": w, "label_smoothing": 0.3}),
            "smoothing_weight_ignore_mean": ((x(6, C, seed=19), labels(6, seed=20, device=device, ignored=ignored["ignore"])),
                                             {"weight": w, "label_smoothing": 0.2}),
            "smoothing_weight_ignore_none": ((x(6, C, seed=19), labels(6, seed=20, device=device, ignored=ignored["ignore"])),
                                             {"weight": w, "label_smoothing": 0.2, "reduction": "none"}),
            "smoothing_ignore_3d_sum": ((x(3, C, 4, seed=21), labels(3, 4, seed=22, device=device, ignored=ignored["ignore_3d"])),
                                        {"label_smoothing": 0.1, "reduction": "sum"}),
            # class probabilities
            "probs_mean": ((x(6, C, seed=23), probabilities(6, C, seed=24, device=device, dtype=dtype)), {}),
            "probs_none": ((x(6, C, seed=23), probabilities(6, C, seed=24, device=device, dtype=dtype)), {"reduction": "none"}),
            "probs_3d_mean": ((x(3, C, 4, seed=25), probabilities(3, C, 4, seed=26, device=device, dtype=dtype)), {}),
            "probs_weight_mean": ((x(6, C, seed=23), probabilities(6, C, seed=24, device=device, dtype=dtype)), {"weight": w}),
            "probs_weight_smoothing_sum": ((x(6, C, seed=23), probabilities(6, C, seed=24, device=device, dtype=dtype)),
                                           {"weight": w, "label_smoothing": 0.2, "reduction": "sum"}),
            "probs_1d_unbatched": ((x(C, seed=27), probabilities(C, seed=28, device=device, dtype=dtype, dim=0)), {}),
        }  # fmt: skip
        return ce[name]
    if op == "binary_cross_entropy_with_logits":
        t = binary_targets(4, C, seed=32, device=device, dtype=dtype)
        pos_weight = torch.tensor([0.5, 1.0, 2.0, 4.0, 1.5], dtype=dtype, device=device)
        elem_weight = randn(4, C, seed=33, device=device, dtype=dtype).abs() + 0.1
        bce = {
            "mean": ((x(4, C, seed=31), t), {}),
            "sum": ((x(4, C, seed=31), t), {"reduction": "sum"}),
            "none": ((x(4, C, seed=31), t), {"reduction": "none"}),
            "soft_targets": ((x(4, C, seed=31), binary_targets(4, C, seed=34, device=device, dtype=dtype, soft=True)), {"reduction": "none"}),
            "weight_mean": ((x(4, C, seed=31), t), {"weight": elem_weight}),
            "class_weight_broadcast_none": ((x(4, C, seed=31), t), {"weight": w, "reduction": "none"}),
            "pos_weight_none": ((x(4, C, seed=31), t), {"pos_weight": pos_weight, "reduction": "none"}),
            "pos_weight_mean": ((x(4, C, seed=31), t), {"pos_weight": pos_weight}),
            "weight_pos_weight_3d_sum": ((x(2, 3, C, seed=35), binary_targets(2, 3, C, seed=36, device=device, dtype=dtype, soft=True)),
                                         {"weight": w, "pos_weight": pos_weight, "reduction": "sum"}),
        }  # fmt: skip
        return bce[name]
    if op == "kl_div":
        def log_p(*shape, seed):
            return torch.log_softmax(randn(*shape, seed=seed, device="cpu", dtype=torch.float64) * 2 * scale, dim=-1).to(device=device, dtype=dtype)

        q = probabilities(4, C, seed=42, device=device, dtype=dtype, dim=-1)
        q_zeros = q.clone()
        q_zeros[0, 1] = 0.0
        q_zeros[2, 3] = 0.0
        kl = {
            "mean": ((log_p(4, C, seed=41), q), {}),
            "batchmean": ((log_p(4, C, seed=41), q), {"reduction": "batchmean"}),
            "sum": ((log_p(4, C, seed=41), q), {"reduction": "sum"}),
            "none": ((log_p(4, C, seed=41), q), {"reduction": "none"}),
            "3d_batchmean": ((log_p(3, 2, C, seed=43), probabilities(3, 2, C, seed=44, device=device, dtype=dtype, dim=-1)), {"reduction": "batchmean"}),
            "zero_targets_none": ((log_p(4, C, seed=41), q_zeros), {"reduction": "none"}),
            "zero_targets_batchmean": ((log_p(4, C, seed=41), q_zeros), {"reduction": "batchmean"}),
            "log_target_none": ((log_p(4, C, seed=41), q.log()), {"reduction": "none", "log_target": True}),
            "log_target_batchmean": ((log_p(4, C, seed=41), q.log()), {"reduction": "batchmean", "log_target": True}),
        }  # fmt: skip
        return kl[name]
    if op == "huber_loss":
        a, b = x(4, 6, seed=51), x(4, 6, seed=52)  # differences from about 0 to 8: both sides of every delta
        hub = {
            "mean": ((a, b), {}),
            "sum": ((a, b), {"reduction": "sum"}),
            "none": ((a, b), {"reduction": "none"}),
            "delta_0.5_none": ((a, b), {"reduction": "none", "delta": 0.5}),
            "delta_2.5_mean": ((a, b), {"delta": 2.5}),
            "small_errors_delta_3_none": ((a, a + 0.1 * x(4, 6, seed=53)), {"reduction": "none", "delta": 3.0}),
        }
        return hub[name]
    if op == "sigmoid_focal_loss":
        t = binary_targets(4, C, seed=62, device=device, dtype=dtype)
        focal = {
            "default": ((x(4, C, seed=61), t), {}),
            "mean": ((x(4, C, seed=61), t), {"reduction": "mean"}),
            "sum": ((x(4, C, seed=61), t), {"reduction": "sum"}),
            "alpha_0.75": ((x(4, C, seed=61), t), {"alpha": 0.75}),
            "alpha_negative": ((x(4, C, seed=61), t), {"alpha": -1.0}),
            "gamma_0": ((x(4, C, seed=61), t), {"gamma": 0.0}),
            "gamma_3.5_3d": ((x(2, 3, C, seed=63), binary_targets(2, 3, C, seed=64, device=device, dtype=dtype)), {"gamma": 3.5}),
            "soft_targets": ((x(4, C, seed=61), binary_targets(4, C, seed=65, device=device, dtype=dtype, soft=True)), {"reduction": "sum"}),
        }
        return focal[name]
    raise KeyError(op)


# ---------------------------------------------------------------- shared comparisons


def expect_matches_torch(losses, op: str, args, kwargs, *, device, dtype=torch.float32, suffix=""):
    """The learner's op(*args, **kwargs) under the rules, against torch's in float64 (and in dtype)."""
    what = describe_call(op, *args, **kwargs) + suffix
    got = rules.call(getattr(losses, op), *args, what=what, **kwargs)
    want = TORCH[op](*(golden(a) for a in args), **{k: golden(v) for k, v in kwargs.items()})
    baseline = TORCH[op](*args, **kwargs)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


def upstream_like(t, device):
    shape = tuple(t.shape)
    return randn(*shape, seed=99, device=device) if shape else randn(1, seed=99, device=device).reshape(())


def expect_input_gradient(losses, op: str, args, kwargs, *, device):
    """The gradient of the loss with respect to input (what training follows), through the
    learner's call with a seeded upstream gradient, against torch's autograd in float64."""
    what = describe_call(op, *args, **kwargs)
    x, rest = args[0], args[1:]
    gx = golden(x).requires_grad_()
    want_out = TORCH[op](gx, *(golden(a) for a in rest), **{k: golden(v) for k, v in kwargs.items()})
    upstream = upstream_like(want_out, device)
    (want,) = torch.autograd.grad(want_out, gx, golden(upstream))
    bx = x.detach().clone().requires_grad_()
    (base,) = torch.autograd.grad(TORCH[op](bx, *rest, **kwargs), bx, upstream)
    leaf = x.detach().clone().requires_grad_()
    out = rules.call(getattr(losses, op), leaf, *rest, what=what, backward=upstream, **kwargs)
    checks.expect_tensor(out, shape=want_out.shape, dtype=x.dtype, device=device, what=what)
    if not out.requires_grad or leaf.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches input; is something detached?")
    expect_close(leaf.grad, want, what=f"the gradient of input through {what}", dtype=x.dtype, device=device, baseline=base)


# ---------------------------------------------------------------- cross_entropy


@pytest.mark.parametrize("name", ["mean", "sum", "none", "3d_mean", "4d_none", "1d_unbatched", "non_contiguous", "weight_mean", "weight_none"])
def test_cross_entropy_matches_torch(losses, device, name):
    """Class-index targets: reductions, (N, C), (N, C, d1, ...) and (C,) inputs, class weights."""
    args, kwargs = case("cross_entropy", name, device)
    expect_matches_torch(losses, "cross_entropy", args, kwargs, device=device)


@pytest.mark.parametrize("name", ["ignore_mean", "ignore_none", "ignore_index_2_mean", "weight_ignore_mean", "weight_ignore_sum",
                                  "weight_ignore_3d_mean"])  # fmt: skip
def test_cross_entropy_ignores_targets(losses, device, name):
    """Targets equal to ignore_index (-100, or a real class) add 0 and leave the mean's divisor:
    with weights, the mean divides by the summed weights of the kept targets."""
    args, kwargs = case("cross_entropy", name, device)
    expect_matches_torch(losses, "cross_entropy", args, kwargs, device=device)


@pytest.mark.parametrize("name", ["smoothing_mean", "smoothing_none", "smoothing_weight_mean", "smoothing_weight_ignore_mean",
                                  "smoothing_weight_ignore_none", "smoothing_ignore_3d_sum"])  # fmt: skip
def test_cross_entropy_label_smoothing(losses, device, name):
    """eps / C of the target spread over every class, each with its class weight; ignored
    targets add nothing, and the mean divides by the kept targets' weights."""
    args, kwargs = case("cross_entropy", name, device)
    expect_matches_torch(losses, "cross_entropy", args, kwargs, device=device)


@pytest.mark.parametrize("name", ["probs_mean", "probs_none", "probs_3d_mean", "probs_weight_mean", "probs_weight_smoothing_sum",
                                  "probs_1d_unbatched"])  # fmt: skip
def test_cross_entropy_probability_targets(losses, device, name):
    """A float target of input's shape is a distribution over classes; the mean is over
    positions, whatever the weights."""
    args, kwargs = case("cross_entropy", name, device)
    expect_matches_torch(losses, "cross_entropy", args, kwargs, device=device)


@pytest.mark.parametrize("kwargs", [{}, {"weight": "w", "label_smoothing": 0.1}, {"reduction": "sum"}, {"reduction": "none"}],
                         ids=["mean", "weighted_smoothed_mean", "sum", "none"])  # fmt: skip
def test_cross_entropy_all_targets_ignored(losses, device, kwargs):
    """Every target ignored: the mean is 0 / 0, nan as torch's (not 0, not an error); the sum is 0."""
    kwargs = {k: class_weight(device) if v == "w" else v for k, v in kwargs.items()}
    x = randn(4, C, seed=71, device=device, scale=2.0)
    t = torch.full((4,), -100, dtype=torch.long, device=device)
    what = describe_call("cross_entropy", x, t, **kwargs) + " with every target -100"
    got = rules.call(losses.cross_entropy, x, t, what=what, **kwargs)
    want = F.cross_entropy(golden(x), t, **{k: golden(v) for k, v in kwargs.items()})
    checks.expect_tensor(got, shape=want.shape, dtype=x.dtype, device=device, what=what)
    if want.isnan().all():
        if not got.isnan().all():
            raise checks.Wrong(f"{what} returned {got.item():g}; expected nan, as torch's (0 / 0: no target is kept)")
        return
    expect_close(got, want, what=what, dtype=x.dtype, device=device)


# ---------------------------------------------------------------- the other losses


@pytest.mark.parametrize("name", ["mean", "sum", "none", "soft_targets", "weight_mean", "class_weight_broadcast_none", "pos_weight_none",
                                  "pos_weight_mean", "weight_pos_weight_3d_sum"])  # fmt: skip
def test_bce_with_logits_matches_torch(losses, device, name):
    args, kwargs = case("binary_cross_entropy_with_logits", name, device)
    expect_matches_torch(losses, "binary_cross_entropy_with_logits", args, kwargs, device=device)


@pytest.mark.parametrize("name", ["mean", "batchmean", "sum", "none", "3d_batchmean", "log_target_none", "log_target_batchmean"])
def test_kl_div_matches_torch(losses, device, name):
    args, kwargs = case("kl_div", name, device)
    expect_matches_torch(losses, "kl_div", args, kwargs, device=device)


@pytest.mark.parametrize("name", ["zero_targets_none", "zero_targets_batchmean"])
def test_kl_div_zero_targets(losses, device, name):
    """A target probability of exactly 0 contributes 0 (0 * log 0 = 0), not nan."""
    args, kwargs = case("kl_div", name, device)
    expect_matches_torch(losses, "kl_div", args, kwargs, device=device, suffix=" (target with exact zeros)")


@pytest.mark.parametrize("name", ["mean", "sum", "none", "delta_0.5_none", "delta_2.5_mean", "small_errors_delta_3_none"])
def test_huber_loss_matches_torch(losses, device, name):
    args, kwargs = case("huber_loss", name, device)
    expect_matches_torch(losses, "huber_loss", args, kwargs, device=device)


@pytest.mark.parametrize("name", ["default", "mean", "sum", "alpha_0.75", "alpha_negative", "gamma_0", "gamma_3.5_3d", "soft_targets"])
def test_sigmoid_focal_loss_matches_formula(losses, device, name):
    """torchvision's definition (in the docstring): reduction "none" by default, alpha < 0 for no weighting."""
    args, kwargs = case("sigmoid_focal_loss", name, device)
    expect_matches_torch(losses, "sigmoid_focal_loss", args, kwargs, device=device)


# ---------------------------------------------------------------- gradients, stability, precision


GRADIENT_CASES = [
    ("cross_entropy", "mean"), ("cross_entropy", "weight_ignore_3d_mean"), ("cross_entropy", "smoothing_weight_ignore_mean"),
    ("cross_entropy", "probs_weight_smoothing_sum"), ("binary_cross_entropy_with_logits", "weight_pos_weight_3d_sum"),
    ("kl_div", "batchmean"), ("kl_div", "log_target_none"), ("huber_loss", "delta_0.5_none"), ("huber_loss", "mean"),
    ("sigmoid_focal_loss", "default"), ("sigmoid_focal_loss", "soft_targets"),
]  # fmt: skip


@pytest.mark.parametrize("op, name", GRADIENT_CASES, ids=[f"{op}-{name}" for op, name in GRADIENT_CASES])
def test_gradients_match_torch(losses, device, op, name):
    args, kwargs = case(op, name, device)
    expect_input_gradient(losses, op, args, kwargs, device=device)


LARGE_CASES = [
    ("cross_entropy", "weight_ignore_mean"), ("cross_entropy", "smoothing_none"), ("cross_entropy", "probs_none"),
    ("binary_cross_entropy_with_logits", "pos_weight_none"), ("sigmoid_focal_loss", "default"),
]  # fmt: skip
LARGE_IDS = [f"{op}-{name}" for op, name in LARGE_CASES]


@pytest.mark.parametrize("op, name", LARGE_CASES, ids=LARGE_IDS)
def test_stable_for_large_logits(losses, device, op, name):
    """Logits times 1000: exp overflows and sigmoid rounds to exactly 0 or 1, so a loss
    built from exp(x) or log(p) gives inf or nan where torch's stays finite."""
    args, kwargs = case(op, name, device, scale=1000.0)
    expect_matches_torch(losses, op, args, kwargs, device=device, suffix=" (logits times 1000)")


@pytest.mark.parametrize("op, name", LARGE_CASES, ids=LARGE_IDS)
def test_gradients_stable_for_large_logits(losses, device, op, name):
    """The gradient at logits times 1000 is finite too: a torch.where between two formulas
    whose unused branch overflows gives the right loss but a nan gradient."""
    args, kwargs = case(op, name, device, scale=1000.0)
    expect_input_gradient(losses, op, args, kwargs, device=device)


LOW_PRECISION_CASES = [
    ("cross_entropy", "smoothing_weight_ignore_mean"), ("cross_entropy", "probs_none"),
    ("binary_cross_entropy_with_logits", "pos_weight_none"), ("kl_div", "none"), ("huber_loss", "none"),
    ("sigmoid_focal_loss", "default"),
]  # fmt: skip


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("op, name", LOW_PRECISION_CASES, ids=[f"{op}-{name}" for op, name in LOW_PRECISION_CASES])
def test_low_precision(losses, device, op, name, dtype):
    """bfloat16 and float16 in, the same dtype out, within 4x torch's own error in that dtype."""
    checks.need_dtype(dtype, device)
    args, kwargs = case(op, name, device, dtype=dtype)
    expect_matches_torch(losses, op, args, kwargs, device=device, dtype=dtype)


INVALID = ["cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "huber_loss", "sigmoid_focal_loss"]
FIRST_CASE = {"cross_entropy": "mean", "binary_cross_entropy_with_logits": "mean", "kl_div": "mean", "huber_loss": "mean",
              "sigmoid_focal_loss": "default"}  # fmt: skip


@pytest.mark.parametrize("op", INVALID)
def test_unknown_reduction_raises(losses, device, op):
    """reduction="avg" is a typo: torch raises ValueError rather than returning something."""
    args, _ = case(op, FIRST_CASE[op], device)
    what = describe_call(op, *args, reduction="avg")
    rules.expect_raises(ValueError, getattr(losses, op), *args, what=what, reduction="avg")
