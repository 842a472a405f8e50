"""Grader for the tensors kata: pairwise_sq_distances, batched_gather, one_hot, masked_mean
and sliding_windows.

Every value is checked against torch's own ops computed in float64 (torch.cdist, gather,
F.one_hot, torch.nanmean, Tensor.unfold); selections (gather, one-hot, windows) must be
exact. Gradients against torch's autograd where training uses the result; half precision
against torch's own error in that dtype; the kata's rules (no cdist, one_hot, unfold or
nanmean, inputs unmodified) on every call; integer inputs without dtype leaks; the errors
the docstrings promise; and op counts that do not grow with the number of rows.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("tensors")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def tensors(impl):
    return impl.load("tensors")


# ---------------------------------------------------------------- inputs and comparisons


def make_x(*shape, seed, device, dtype=torch.float32, scale=1.0, offset=0.0):
    """Seeded x * scale + offset, rounded once to dtype (the golden starts from the rounded values)."""
    return (randn(*shape, seed=seed, device="cpu", dtype=torch.float64, scale=scale) + offset).to(device=device, dtype=dtype)


def randint(*shape, low, high, seed, device, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(device=device, dtype=dtype)


def bool_mask(*shape, seed, device, p=0.6):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(device)


# ---------------------------------------------------------------- pairwise_sq_distances


def torch_sq_distances(x, y):
    # The direct (not matrix-multiply) kernel: cdist's own expansion would cancel too.
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2


def distance_case(name: str, device, dtype=torch.float32):
    def m(*shape, seed, **kw):
        return make_x(*shape, seed=seed, device=device, dtype=dtype, **kw)

    x = m(6, 8, seed=3)
    coincident = torch.cat([m(3, 8, seed=4), x[[4, 1]]])  # rows 3 and 4 are x's rows 4 and 1
    cases = {
        "basic": (m(5, 16, seed=1), m(7, 16, seed=2)),
        # N = 1 or M = 1: the wrong broadcast axis still broadcasts, to the wrong shape.
        "one_row_of_x": (m(1, 8, seed=5), m(6, 8, seed=6)),
        "one_row_of_y": (m(6, 8, seed=7), m(1, 8, seed=8)),
        "one_feature": (m(4, 1, seed=9), m(5, 1, seed=10)),
        "coincident_points": (x, coincident),
        # |x|^2 + |y|^2 - 2 x.y: each term near 1.6e5, where float32 steps by 0.016, for a
        # distance near 32: the expansion cancels catastrophically.
        "far_from_origin": (m(5, 16, seed=11, offset=100.0), m(6, 16, seed=12, offset=100.0)),
        "non_contiguous": (m(16, 5, seed=13).T, m(16, 7, seed=14).T),
    }
    return cases[name]


DISTANCE_CASES = ["basic", "one_row_of_x", "one_row_of_y", "one_feature", "coincident_points", "far_from_origin", "non_contiguous"]


@pytest.mark.parametrize("case, dtype", [(c, torch.float32) for c in DISTANCE_CASES] + [(c, torch.float64) for c in ("basic", "far_from_origin")],
                         ids=[*DISTANCE_CASES, "basic-float64", "far_from_origin-float64"])  # fmt: skip
def test_pairwise_sq_distances_matches_torch(tensors, device, case, dtype):
    x, y = distance_case(case, device, dtype)
    what = describe_call("pairwise_sq_distances", x, y)
    got = rules.call(tensors.pairwise_sq_distances, x, y, what=what)
    expect_close(got, torch_sq_distances(golden(x), golden(y)), what=what, dtype=dtype, device=device,
                 baseline=torch_sq_distances(x, y))  # fmt: skip


def test_pairwise_sq_distances_never_negative(tensors, device):
    """Twenty points far from the origin against themselves: the expansion
    |x|^2 + |y|^2 - 2 x.y rounds some zero distances below 0 (float32 steps by 0.002 at
    |x|^2 near 2e4), and a negative squared distance breaks a sqrt or a kernel exp(-d) > 1."""
    x = make_x(20, 16, seed=3, device=device, scale=10.0, offset=30.0)
    what = describe_call("pairwise_sq_distances", x, x) + " (the same points twice)"
    got = rules.call(tensors.pairwise_sq_distances, x, x.clone(), what=what)
    checks.expect_tensor(got, shape=(20, 20), dtype=torch.float32, device=device, what=what)
    if (got < 0).any():
        i, j = (int(v) for v in (got < 0).nonzero()[0])
        raise checks.Wrong(f"{what} returned a negative squared distance, {got[i, j].item():.3g} at ({i}, {j}); "
                           f"{int((got < 0).sum())} of {got.numel()} are negative")  # fmt: skip


INT_CASES = {
    "int64": (torch.int64, -1000, 1000),
    # 3 - 5 in uint8 is 254: the differences must be taken in int64.
    "uint8": (torch.uint8, 0, 256),
    # 300^2 = 90000 does not fit int16.
    "int16": (torch.int16, -300, 300),
}


@pytest.mark.parametrize("case", list(INT_CASES))
def test_pairwise_sq_distances_integer_inputs(tensors, device, case):
    """Integer points give exact int64 distances, whatever their width."""
    dtype, low, high = INT_CASES[case]
    x = randint(5, 8, low=low, high=high, seed=1, device=device, dtype=dtype)
    y = randint(6, 8, low=low, high=high, seed=2, device=device, dtype=dtype)
    what = describe_call("pairwise_sq_distances", x, y)
    got = rules.call(tensors.pairwise_sq_distances, x, y, what=what)
    want = torch_sq_distances(x.double().cpu(), y.double().cpu()).round().long()  # exact: every value < 2^53
    checks.expect_equal(got, want, what=what, device=device)


def test_pairwise_sq_distances_gradients(tensors, device):
    """Gradients of x and y, at coincident points too (where the distance is 0): the
    gradient of d^2 is 2 (x - y) everywhere, 0 there; squaring a square root is nan there."""
    x, y = distance_case("coincident_points", device)
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    what = describe_call("pairwise_sq_distances", x, y)
    upstream = randn(x.shape[0], y.shape[0], seed=9, device=device)
    out = rules.call(tensors.pairwise_sq_distances, x, y, what=what, backward=upstream)
    checks.expect_tensor(out, shape=upstream.shape, dtype=torch.float32, device=device, what=what)

    def sq(a, b):  # torch's autograd of the definition, in float64 and in float32
        return (a.unsqueeze(1) - b.unsqueeze(0)).square().sum(-1)

    gx, gy = golden(x).requires_grad_(), golden(y).requires_grad_()
    want = torch.autograd.grad(sq(gx, gy), [gx, gy], golden(upstream))
    bx, by = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    base = torch.autograd.grad(sq(bx, by), [bx, by], upstream)
    for name, leaf, w, b in (("x", x, want[0], base[0]), ("y", y, want[1], base[1])):
        if leaf.grad is None:
            raise checks.Wrong(f"{what}: no gradient reaches {name}; is something detached?")
        expect_close(leaf.grad, w, what=f"the gradient of {name} through {what}", dtype=torch.float32, device=device, baseline=b)


# ---------------------------------------------------------------- batched_gather


def gather_case(name: str, device):
    def m(*shape, seed):
        return make_x(*shape, seed=seed, device=device)

    cases = {
        "basic": (m(2, 6, 4, seed=1), randint(2, 3, low=0, high=6, seed=2, device=device)),
        # More picks than rows, so rows repeat.
        "repeats_and_k_above_t": (m(3, 4, 5, seed=3), randint(3, 7, low=0, high=4, seed=4, device=device)),
        "one_batch": (m(1, 5, 3, seed=5), randint(1, 4, low=0, high=5, seed=6, device=device)),
        "one_pick": (m(4, 6, 3, seed=7), randint(4, 1, low=0, high=6, seed=8, device=device)),
        # D = 1: an index not expanded over D is already the output's shape here.
        "one_feature": (m(3, 5, 1, seed=13), randint(3, 4, low=0, high=5, seed=14, device=device)),
        "non_contiguous": (m(2, 4, 6, seed=9).transpose(1, 2), randint(2, 5, low=0, high=6, seed=10, device=device)),
        "int64_values": (randint(3, 5, 4, low=-50, high=50, seed=11, device=device), randint(3, 6, low=0, high=5, seed=12, device=device)),
    }
    return cases[name]


GATHER_CASES = ["basic", "repeats_and_k_above_t", "one_batch", "one_pick", "one_feature", "non_contiguous", "int64_values"]


@pytest.mark.parametrize("case", GATHER_CASES)
def test_batched_gather_matches_torch(tensors, device, case):
    x, idx = gather_case(case, device)
    what = describe_call("batched_gather", x, idx)
    got = rules.call(tensors.batched_gather, x, idx, what=what)
    checks.expect_equal(got, torch.take_along_dim(x, idx.unsqueeze(-1), dim=1), what=what, device=device)


# ---------------------------------------------------------------- one_hot


def label_case(name: str, device):
    cases = {
        "1d_inferred": (torch.tensor([3, 0, 2, 2, 5], device=device), -1),
        "2d_explicit": (randint(3, 4, low=0, high=5, seed=1, device=device), 7),  # more classes than labels use
        "0d_label": (torch.tensor(2, device=device), 4),
        "empty_explicit": (torch.zeros(0, dtype=torch.long, device=device), 5),
        "int32_labels": (randint(2, 3, low=0, high=6, seed=2, device=device, dtype=torch.int32), 6),
        "uint8_inferred": (randint(7, low=0, high=4, seed=3, device=device, dtype=torch.uint8), -1),
    }
    return cases[name]


LABEL_CASES = ["1d_inferred", "2d_explicit", "0d_label", "empty_explicit", "int32_labels", "uint8_inferred"]


@pytest.mark.parametrize("case", LABEL_CASES)
def test_one_hot_matches_torch(tensors, device, case):
    labels, c = label_case(case, device)
    what = describe_call("one_hot", labels, c)
    got = rules.call(tensors.one_hot, labels, c, what=what)
    checks.expect_equal(got, F.one_hot(labels.long(), c), what=what, device=device)


BAD_LABELS = {
    "label_equals_num_classes": ([1, 5, 0], 5),
    "negative_label": ([2, -1, 0], 4),
    "negative_label_inferred": ([2, -1, 0], -1),
    "empty_inferred": ([], -1),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_one_hot_rejects_bad_labels(tensors, device, case):
    values, c = BAD_LABELS[case]
    labels = torch.tensor(values, dtype=torch.long, device=device)
    rules.expect_raises(ValueError, tensors.one_hot, labels, c, what=describe_call("one_hot", labels, c) + f" with labels {values}")


# ---------------------------------------------------------------- masked_mean


def torch_masked_mean(x, mask, dim):
    """torch's nanmean over the True positions (the others made nan), 0 where there are none."""
    return torch.nanmean(x.masked_fill(~mask, float("nan")), dim=dim).nan_to_num(0.0)


def mean_case(name: str, device, dtype=torch.float32):
    def m(*shape, seed, **kw):
        return make_x(*shape, seed=seed, device=device, dtype=dtype, **kw)

    def mask(*shape, seed, p=0.6):
        return bool_mask(*shape, seed=seed, device=device, p=p)

    no_rows = mask(3, 5, 4, seed=8)
    no_rows[0, :, 1] = False  # (b=0, d=1) and (b=2, d=*) have no True position along dim 1
    no_rows[2] = False
    with_inf = m(2, 6, 3, seed=9)
    inf_mask = mask(2, 6, 3, seed=10)
    with_inf[~inf_mask] = float("inf")  # padding that holds inf must not leak in: 0 * inf is nan
    with_inf[1, ::2][~inf_mask[1, ::2]] = float("-inf")
    cases = {
        "dim_1": (m(2, 5, 4, seed=1), mask(2, 5, 4, seed=2), 1),
        "dim_last": (m(2, 5, 4, seed=3), mask(2, 5, 4, seed=4), -1),
        "dim_0": (m(3, 4, seed=5), mask(3, 4, seed=6), 0),
        "one_dim": (m(9, seed=7), mask(9, seed=11), 0),
        # (B, T, 1): whole vectors masked, the usual padding mask of (B, T, D) activations.
        "mask_per_vector": (m(3, 6, 4, seed=12), mask(3, 6, 1, seed=13), 1),
        # (B, 1, D) averaged over dim 1: each True covers all T positions, so it counts T times.
        "mask_broadcast_along_dim": (m(3, 6, 4, seed=14), mask(3, 1, 4, seed=15), 1),
        # (T, D) for (B, T, D): the mask has no batch dim at all.
        "mask_without_batch_dim": (m(2, 5, 4, seed=16), mask(5, 4, seed=17), 0),
        "no_true_positions": (m(3, 5, 4, seed=18), no_rows, 1),
        "inf_where_masked_out": (with_inf, inf_mask, 1),
        "non_contiguous": (m(2, 4, 5, seed=19).transpose(1, 2), mask(2, 5, 4, seed=20), 1),
    }
    return cases[name]


MEAN_CASES = ["dim_1", "dim_last", "dim_0", "one_dim", "mask_per_vector", "mask_broadcast_along_dim", "mask_without_batch_dim",
              "no_true_positions", "inf_where_masked_out", "non_contiguous"]  # fmt: skip


@pytest.mark.parametrize("case, dtype", [(c, torch.float32) for c in MEAN_CASES] + [(c, torch.float64) for c in ("dim_1", "no_true_positions")],
                         ids=[*MEAN_CASES, "dim_1-float64", "no_true_positions-float64"])  # fmt: skip
def test_masked_mean_matches_torch(tensors, device, case, dtype):
    x, mask, dim = mean_case(case, device, dtype)
    what = describe_call("masked_mean", x, mask, dim)
    got = rules.call(tensors.masked_mean, x, mask, dim, what=what)
    expect_close(got, torch_masked_mean(golden(x), golden(mask), dim), what=what, dtype=dtype, device=device,
                 baseline=torch_masked_mean(x, mask, dim))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
def test_masked_mean_integer_inputs(tensors, device, dtype):
    """Integer and bool x: a true (float32) mean, not a floor division or x's dtype."""
    x = randint(3, 5, 4, low=-9 if dtype != torch.bool else 0, high=10 if dtype != torch.bool else 2, seed=1, device=device, dtype=dtype)
    mask = bool_mask(3, 5, 4, seed=2, device=device)
    mask[1, :, 2] = False
    what = describe_call("masked_mean", x, mask, 1)
    got = rules.call(tensors.masked_mean, x, mask, 1, what=what)
    expect_close(got, torch_masked_mean(x.double().cpu(), mask.cpu(), 1), what=what, dtype=torch.float32, device=device,
                 baseline=torch_masked_mean(x.float(), mask, 1))  # fmt: skip


def test_masked_mean_gradients(tensors, device):
    """x.grad: 1 / count at the True positions, 0 elsewhere, and finite where a row has no
    True position (a where(count > 0, total / count, 0) guard is nan there)."""
    x, mask, dim = mean_case("no_true_positions", device)
    x = x.clone().requires_grad_()
    what = describe_call("masked_mean", x, mask, dim)
    upstream = randn(3, 4, seed=9, device=device)
    out = rules.call(tensors.masked_mean, x, mask, dim, what=what, backward=upstream)
    checks.expect_tensor(out, shape=upstream.shape, dtype=torch.float32, device=device, what=what)
    if x.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches x; is something detached?")

    def mean(t):  # the definition, with a gradient defined everywhere
        return torch.where(mask.to(t.device), t, 0.0).sum(dim) / mask.to(t.device).sum(dim).clamp(min=1)

    gx, bx = golden(x).requires_grad_(), x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(mean(gx), gx, golden(upstream))
    (base,) = torch.autograd.grad(mean(bx), bx, upstream)
    expect_close(x.grad, want, what=f"the gradient of x through {what}", dtype=torch.float32, device=device, baseline=base)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("op", ["pairwise_sq_distances", "masked_mean"])
def test_low_precision(tensors, device, op, dtype):
    """bfloat16 and float16 in, the same dtype out, within 4x the error of rounding the
    exact result (masked_mean: values near 2000 whose float16 sum overflows to inf)."""
    checks.need_dtype(dtype, device)
    if op == "pairwise_sq_distances":
        args = (make_x(6, 16, seed=1, device=device, dtype=dtype), make_x(5, 16, seed=2, device=device, dtype=dtype))
        want = torch_sq_distances(golden(args[0]), golden(args[1]))
        baseline = (args[0].unsqueeze(1) - args[1].unsqueeze(0)).square().sum(-1)  # the definition, in dtype
    else:
        x = make_x(2, 64, 4, seed=3, device=device, dtype=dtype, scale=100.0, offset=2000.0)
        mask = bool_mask(2, 64, 4, seed=4, device=device, p=0.9)
        args = (x, mask, 1)
        want = torch_masked_mean(golden(x), mask.cpu(), 1)
        baseline = want.to(dtype)  # the rounding of the exact mean (nanmean's float16 sum overflows too)
    what = describe_call(op, *args)
    got = rules.call(getattr(tensors, op), *args, what=what)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=baseline)


# ---------------------------------------------------------------- sliding_windows


def window_case(name: str, device):
    def m(*shape, seed):
        return make_x(*shape, seed=seed, device=device)

    cases = {
        "one_dim": (m(10, seed=1), 3, 1),
        "three_dims": (m(2, 3, 12, seed=2), 4, 2),
        "step_above_size": (m(2, 11, seed=3), 2, 3),  # gaps between windows
        "step_equals_size": (m(3, 12, seed=4), 4, 4),
        "size_equals_length": (m(2, 7, seed=5), 7, 1),  # one window
        "remainder_left_out": (m(2, 10, seed=6), 4, 3),  # windows at 0, 3, 6; element 9 fits none
        "size_1": (m(2, 5, seed=7), 1, 2),
        # The last dim is strided (stride 3): strides computed from the shape read the wrong elements.
        "non_contiguous": (m(12, 3, seed=8).T, 3, 2),
        # A slice of a larger tensor: it starts at storage offset 25, rows 20 apart.
        "slice_of_larger_tensor": (m(4, 20, seed=9)[1:, 5:], 4, 3),
        "int64_values": (randint(2, 9, low=-50, high=50, seed=10, device=device), 3, 2),
    }
    return cases[name]


WINDOW_CASES = ["one_dim", "three_dims", "step_above_size", "step_equals_size", "size_equals_length", "remainder_left_out",
                "size_1", "non_contiguous", "slice_of_larger_tensor", "int64_values"]  # fmt: skip


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_sliding_windows_matches_torch(tensors, device, case):
    x, size, step = window_case(case, device)
    what = describe_call("sliding_windows", x, size, step)
    got = rules.call(tensors.sliding_windows, x, size, step, what=what)
    checks.expect_equal(got, x.unfold(-1, size, step), what=what, device=device)


BAD_WINDOWS = {"size_above_length": (6, 1), "size_0": (0, 1), "step_0": (2, 0)}


@pytest.mark.parametrize("case", list(BAD_WINDOWS))
def test_sliding_windows_rejects_bad_sizes(tensors, device, case):
    size, step = BAD_WINDOWS[case]
    x = make_x(2, 5, seed=1, device=device)
    rules.expect_raises(ValueError, tensors.sliding_windows, x, size, step, what=describe_call("sliding_windows", x, size, step))


# ---------------------------------------------------------------- work


def op_inputs(op: str, n: int, device):
    """Arguments of one call of `op` whose rows (and, for sliding_windows, windows) grow with n."""
    if op == "pairwise_sq_distances":
        return make_x(n, 8, seed=1, device=device), make_x(n + 2, 8, seed=2, device=device)
    if op == "batched_gather":
        return make_x(n, 6, 4, seed=3, device=device), randint(n, 3, low=0, high=6, seed=4, device=device)
    if op == "one_hot":
        return randint(n, 3, low=0, high=5, seed=5, device=device), 5
    if op == "masked_mean":
        return make_x(n, n + 1, 4, seed=6, device=device), bool_mask(n, n + 1, 4, seed=7, device=device), 1
    return make_x(n, 4 * n + 6, seed=8, device=device), 4, 2  # sliding_windows: n rows, 2n + 2 windows


def count(tensors, op, n, device):
    """Every aten op of one call, views included: a loop of slices (views) and one stack
    issues a single compute op, so Rules.count_ops (which leaves views out) would not see it."""
    return Counter(o.name for o in rules.record_ops(getattr(tensors, op), *op_inputs(op, n, device)))


@pytest.mark.parametrize("op", ["pairwise_sq_distances", "batched_gather", "one_hot", "masked_mean", "sliding_windows"])
def test_no_loop_over_rows(tensors, device, op):
    """The same number of aten ops, views included, for 2 rows as for 7 (sliding_windows:
    2 rows of 6 windows, 7 rows of 16)."""
    small, large = op_inputs(op, 2, device), op_inputs(op, 7, device)
    checks.expect_same_op_count(
        partial(count, tensors, op, 2, device), partial(count, tensors, op, 7, device),
        what=op, small_desc=describe_call("inputs", *small), large_desc=describe_call("inputs", *large),
    )  # fmt: skip
