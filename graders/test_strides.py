"""Grader for the strides kata: transpose_view, broadcast_view, sliding_window_view,
is_contiguous and shares_memory.

Each view is compared with torch's own (x.transpose, torch.broadcast_to, x.unfold): the
values exactly, and then where it lives: in the input's own storage (checked where the
learner's code runs, since a tensor that comes back to the judge is a copy), with torch's
strides and storage offset, and with no op that allocates memory. Inputs are
non-contiguous and slices of larger tensors, which code that assumes contiguous strides
or a zero offset gets wrong. is_contiguous is checked against torch on many layouts
(size-1 dims, zero-size tensors, gaps, stride 0); shares_memory on pairs of views of one
buffer built where the learner's code runs (a tensor sent there arrives with its own
copy of its storage, so two views made here would not share it there), against the
byte-range rule of its docstring. Nothing here is random: no check is statistical.
"""

from __future__ import annotations

import pytest
import torch

from kata import checks, course
from kata.checks import describe_call, randn

TOPIC = course.get("strides")
rules = checks.Rules(TOPIC.forbidden)


@pytest.fixture(scope="module")
def strides(impl):
    return impl.load("strides")


# ---------------------------------------------------------------- helpers run where the learner's code is


def view_layout(fn, x, *args):
    """fn(x, *args), and where its result lives: whether in x's own storage, with which
    strides and offset. Runs in the executor, under the kata's rules."""
    out = fn(x, *args)
    if not isinstance(out, torch.Tensor):
        return {"out": out}
    return {
        "out": out,
        "same_storage": out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr(),
        "stride": list(out.stride()),
        "offset": out.storage_offset(),
    }


def laid_out(base, spec):
    """A view of `base`'s bytes: (dtype, size, stride, offset) in elements of dtype."""
    dtype, size, stride, offset = spec
    return base.view(dtype).as_strided(size, stride, offset)


def shares_memory_of(fn, base, other, spec_a, spec_b):
    """fn(a, b) on two views of one buffer, made where fn runs (spec_b None: b is all of
    `other`, a separate tensor). Runs in the executor, under the kata's rules."""
    a = laid_out(base, spec_a)
    b = other if spec_b is None else laid_out(base, spec_b)
    return fn(a, b)


# ---------------------------------------------------------------- comparisons

VIEW_HINT = "are the strides or the offset taken from x?"


def make_x(*shape, seed, device, dtype=torch.float32):
    """Seeded distinct values (randn): a view reading the wrong elements cannot match by chance."""
    if dtype.is_floating_point:
        return randn(*shape, seed=seed, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-100, 100, shape, generator=g).to(device=device, dtype=dtype)


def describe_x(x) -> str:
    """The input's layout too: the case is about it."""
    return f"{describe_call('x', x)[2:-1]}, stride {tuple(x.stride())}, offset {x.storage_offset()}"


# ---------------------------------------------------------------- cases


def transpose_case(name: str, device):
    base = make_x(5, 6, 7, seed=5, device=device)
    cases = {
        "2d": (make_x(3, 4, seed=1, device=device), 0, 1),
        "3d_negative_dims": (make_x(2, 3, 4, seed=2, device=device), -1, 0),
        "same_dim": (make_x(3, 4, seed=3, device=device), 1, 1),
        "one_dim": (make_x(5, seed=4, device=device), 0, -1),
        # Already transposed: strides (1, 3), not (4, 1).
        "non_contiguous": (make_x(4, 3, seed=6, device=device).T, 0, 1),
        # A slice: storage offset 1 * 42 + 2 = 44, strides (42, 14, 1).
        "slice_with_offset": (base[1:4, ::2, 2:], 0, 2),
        "int8_values": (make_x(3, 5, seed=7, device=device, dtype=torch.int8), 1, 0),
    }
    return cases[name]


TRANSPOSE_CASES = ["2d", "3d_negative_dims", "same_dim", "one_dim", "non_contiguous", "slice_with_offset", "int8_values"]


def broadcast_case(name: str, device):
    cases = {
        "size_1_dim": (make_x(3, 1, seed=1, device=device), (3, 4)),
        "new_leading_dims": (make_x(4, seed=2, device=device), (2, 3, 4)),
        # A vector to a square matrix: it becomes the rows (aligned from the right), not the columns.
        "vector_to_square": (make_x(3, seed=9, device=device), (3, 3)),
        "minus_one_keeps_size": (make_x(3, 1, seed=3, device=device), (2, -1, 5)),
        "0d": (make_x(1, seed=4, device=device)[0], (2, 3)),
        "same_shape": (make_x(2, 3, seed=5, device=device), (2, 3)),
        # A column of a (5, 4): stride (4, 1), offset 1.
        "slice_with_offset": (make_x(5, 4, seed=6, device=device)[:, 1:2], (2, 5, 3)),
        "non_contiguous": (make_x(4, 3, seed=7, device=device).T[:1], (2, 3, 4)),
        "float16_values": (make_x(1, 3, seed=8, device=device, dtype=torch.float16), (4, 3)),
    }
    return cases[name]


BROADCAST_CASES = ["size_1_dim", "new_leading_dims", "vector_to_square", "minus_one_keeps_size", "0d", "same_shape", "slice_with_offset",
                   "non_contiguous", "float16_values"]  # fmt: skip


def window_case(name: str, device):
    cases = {
        "one_dim": (make_x(10, seed=1, device=device), 3, 1),
        "three_dims": (make_x(2, 3, 12, seed=2, device=device), 4, 2),
        "step_above_size": (make_x(2, 11, seed=3, device=device), 2, 3),
        "size_equals_length": (make_x(2, 7, seed=4, device=device), 7, 1),
        "remainder_left_out": (make_x(2, 10, seed=5, device=device), 4, 3),
        # The last dim has stride 3: a window's elements are 3 apart in memory.
        "non_contiguous_last_dim": (make_x(12, 3, seed=6, device=device).T, 3, 2),
        # Storage offset 25, rows 20 apart.
        "slice_with_offset": (make_x(4, 20, seed=7, device=device)[1:, 5:], 4, 3),
        "int64_values": (make_x(2, 9, seed=8, device=device, dtype=torch.int64), 3, 2),
        "default_step": (make_x(2, 6, seed=9, device=device), 3),  # step left out: 1
    }
    return cases[name]


WINDOW_CASES = ["one_dim", "three_dims", "step_above_size", "size_equals_length", "remainder_left_out", "non_contiguous_last_dim",
                "slice_with_offset", "int64_values", "default_step"]  # fmt: skip

VIEWS = {
    "transpose_view": (transpose_case, lambda x, d0, d1: x.transpose(d0, d1)),
    "broadcast_view": (broadcast_case, lambda x, shape: torch.broadcast_to(x, shape)),
    "sliding_window_view": (window_case, lambda x, size, step=1: x.unfold(-1, size, step)),
}


def view_call(fn_name, case, device):
    make, torch_view = VIEWS[fn_name]
    x, *args = make(case, device)
    what = f"{fn_name}({', '.join([describe_x(x), *map(repr, args)])})"
    return x, args, torch_view(x, *args), what


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_transpose_view_matches_torch(strides, device, case):
    x, args, want, what = view_call("transpose_view", case, device)
    checks.expect_equal(rules.call(strides.transpose_view, x, *args, what=what), want, what=what, device=device, hint=VIEW_HINT)


@pytest.mark.parametrize("case", BROADCAST_CASES)
def test_broadcast_view_matches_torch(strides, device, case):
    x, args, want, what = view_call("broadcast_view", case, device)
    checks.expect_equal(rules.call(strides.broadcast_view, x, *args, what=what), want, what=what, device=device, hint=VIEW_HINT)


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_sliding_window_view_matches_torch(strides, device, case):
    x, args, want, what = view_call("sliding_window_view", case, device)
    checks.expect_equal(rules.call(strides.sliding_window_view, x, *args, what=what), want, what=what, device=device, hint=VIEW_HINT)


# ---------------------------------------------------------------- zero copy

ZERO_COPY_CASES = [
    ("transpose_view", "3d_negative_dims"), ("transpose_view", "non_contiguous"), ("transpose_view", "slice_with_offset"),
    ("broadcast_view", "new_leading_dims"), ("broadcast_view", "size_1_dim"), ("broadcast_view", "slice_with_offset"),
    ("broadcast_view", "non_contiguous"),
    ("sliding_window_view", "three_dims"), ("sliding_window_view", "non_contiguous_last_dim"),
    ("sliding_window_view", "slice_with_offset"),
]  # fmt: skip


@pytest.mark.parametrize("fn_name, case", ZERO_COPY_CASES, ids=[f"{f}-{c}" for f, c in ZERO_COPY_CASES])
def test_views_are_zero_copy(strides, device, fn_name, case):
    """The result lives in x's own storage, with torch's strides (stride 0 where
    broadcast) and storage offset, and no op of the call allocated memory (a copy, a
    clone, contiguous(), a tensor built from a list)."""
    x, args, want, what = view_call(fn_name, case, device)
    fn = getattr(strides, fn_name)
    got = rules.call(view_layout, fn, x, *args, what=what)
    out = got["out"]
    checks.expect_tensor(out, shape=want.shape, dtype=want.dtype, device=device, what=what)
    if not got["same_storage"]:
        raise checks.Wrong(f"{what} returned a tensor in new memory, not a view of x's storage: a copy was made")
    # Strides of size-1 dims are never used, so any value is right there.
    mine = tuple(s if n != 1 else None for s, n in zip(got["stride"], want.shape))
    torchs = tuple(s if n != 1 else None for s, n in zip(want.stride(), want.shape))
    if mine != torchs or got["offset"] != want.storage_offset():
        raise checks.Wrong(
            f"{what} returned a view with strides {tuple(got['stride'])} and storage offset {got['offset']}; "
            f"torch's has strides {tuple(want.stride())} and offset {want.storage_offset()}"
        )
    for op in rules.record_ops(fn, x, *args):
        if op.new_tensors():
            raise checks.Wrong(f"{what} ran {op.name}, which allocated memory: a view needs none (build it with as_strided alone)")


# ---------------------------------------------------------------- errors

BAD_BROADCASTS = {
    "fewer_dims": ((2, 3), (3,)),
    "size_2_to_4": ((2, 3), (4, 3)),
    "size_3_to_1": ((3,), (1,)),
    "minus_one_for_a_new_dim": ((3,), (-1, 3)),
}


@pytest.mark.parametrize("case", list(BAD_BROADCASTS))
def test_broadcast_view_rejects_incompatible_shapes(strides, device, case):
    shape, target = BAD_BROADCASTS[case]
    x = make_x(*shape, seed=1, device=device)
    rules.expect_raises(ValueError, strides.broadcast_view, x, target, what=describe_call("broadcast_view", x, target))


BAD_WINDOWS = {"size_above_length": (6, 1), "size_0": (0, 1), "step_0": (2, 0)}


@pytest.mark.parametrize("case", list(BAD_WINDOWS))
def test_sliding_window_view_rejects_bad_sizes(strides, device, case):
    size, step = BAD_WINDOWS[case]
    x = make_x(2, 5, seed=1, device=device)
    rules.expect_raises(ValueError, strides.sliding_window_view, x, size, step, what=describe_call("sliding_window_view", x, size, step))


# ---------------------------------------------------------------- is_contiguous

LAYOUTS = {
    "row_major": [((4,), (1,)), ((2, 3), (3, 1)), ((2, 3, 4), (12, 4, 1)), ((), ())],
    # A size-1 dim's stride is never used: torch ignores it.
    "size_1_dims": [((3, 1), (1, 5)), ((1, 4), (7, 1)), ((2, 1, 3), (3, 99, 1)), ((1,), (0,)), ((5, 1, 1), (1, 1, 1))],
    # No elements: contiguous whatever the strides.
    "zero_size": [((0,), (5,)), ((0, 4), (1, 7)), ((3, 0, 2), (0, 0, 0)), ((2, 0), (1, 2))],
    "permuted": [((2, 3), (1, 2)), ((2, 3, 4), (12, 1, 3)), ((3, 4), (1, 3))],
    # Right order, but gaps between rows or elements.
    "gaps": [((4,), (2,)), ((2, 3, 4), (24, 4, 1)), ((2, 3), (4, 1)), ((3, 2), (2, 2))],
    # Expanded: stride 0 on a dim of size > 1.
    "stride_0": [((4,), (0,)), ((2, 3), (3, 0)), ((2, 3), (0, 1))],
}


@pytest.mark.parametrize("group", list(LAYOUTS))
def test_is_contiguous_matches_torch(strides, group):
    for shape, stride in LAYOUTS[group]:
        want = torch.empty_strided(shape, stride, device="meta").is_contiguous()
        what = f"is_contiguous({shape}, {stride})"
        got = rules.call(strides.is_contiguous, shape, stride, what=what)
        if not isinstance(got, bool):
            raise checks.Wrong(f"{what} returned {checks.describe(got)}, expected a Python bool ({want})")
        if got != want:
            raise checks.Wrong(f"{what} returned {got}; torch says {want}")


# ---------------------------------------------------------------- shares_memory

F64, I32, I8 = torch.float64, torch.int32, torch.int8
# Two views of one 16-element float64 buffer (128 bytes): (dtype, size, stride, offset),
# the offset and strides in elements of that dtype. None: b is a separate tensor.
PAIRS = {
    "same_tensor": ((F64, (16,), (1,), 0), (F64, (16,), (1,), 0)),
    # One storage, disjoint halves: sharing a storage is not sharing memory.
    "disjoint_halves": ((F64, (8,), (1,), 0), (F64, (8,), (1,), 8)),
    "overlapping_slices": ((F64, (8,), (1,), 0), (F64, (6,), (1,), 5)),
    # Element 3 is in both: the last element counts with all its bytes.
    "one_element_in_common": ((F64, (4,), (1,), 0), (F64, (4,), (1,), 3)),
    "adjacent_slices": ((F64, (4,), (1,), 0), (F64, (4,), (1,), 4)),
    # A column of a 4x4 (elements 0, 4, 8, 12) spans 13 elements, not 4.
    "column_and_row_inside_its_span": ((F64, (4,), (4,), 0), (F64, (2,), (1,), 9)),
    "column_and_row_after_its_span": ((F64, (4,), (4,), 0), (F64, (3,), (1,), 13)),
    # No common element, but the ranges overlap: the docstring counts them as sharing.
    "interleaved": ((F64, (8,), (2,), 0), (F64, (8,), (2,), 1)),
    # Bytes 8-24 (float64 elements 1 and 2) and bytes 20-24 (int32 element 5).
    "dtypes_overlapping_bytes": ((F64, (2,), (1,), 1), (I32, (1,), (1,), 5)),
    # Bytes 8-24 and bytes 2-6 (int8 elements 2 to 5): in elements, 1-3 and 2-6 would overlap.
    "dtypes_disjoint_bytes": ((F64, (2,), (1,), 1), (I8, (4,), (1,), 2)),
    "expanded_view": ((F64, (3, 4), (0, 1), 2), (F64, (1,), (1,), 5)),
    "transposed_view": ((F64, (4, 4), (1, 4), 0), (F64, (4, 4), (4, 1), 0)),
    # No elements, no memory, even in the middle of the other's range.
    "empty_slice_inside": ((F64, (0,), (1,), 4), (F64, (16,), (1,), 0)),
    "separate_tensors": ((F64, (16,), (1,), 0), None),
}


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def expected_sharing(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The docstring's rule: byte ranges [first byte, end of the last element) intersect."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    (a0, a1), (b0, b1) = byte_range(a), byte_range(b)
    return a0 < b1 and b0 < a1


@pytest.mark.parametrize("case", list(PAIRS))
def test_shares_memory_compares_byte_ranges(strides, device, case):
    spec_a, spec_b = PAIRS[case]
    base = torch.arange(16, dtype=torch.float64, device=device)
    other = torch.arange(16, dtype=torch.float64, device=device) + 100
    a = laid_out(base, spec_a)
    b = other if spec_b is None else laid_out(base, spec_b)
    want = expected_sharing(a, b)

    def layout(t, spec):
        return "a separate tensor" if spec is None else f"{str(t.dtype).removeprefix('torch.')} size {tuple(t.shape)} stride {tuple(t.stride())} offset {t.storage_offset()}"

    what = f"shares_memory(a, b) with a: {layout(a, spec_a)}, b: {layout(b, spec_b)} (views of one float64 buffer of 16)"
    got = rules.call(shares_memory_of, strides.shares_memory, base, other, spec_a, spec_b, what=what)
    if not isinstance(got, bool):
        raise checks.Wrong(f"{what} returned {checks.describe(got)}, expected a Python bool ({want})")
    if got != want:
        raise checks.Wrong(f"{what} returned {got}, expected {want}")
