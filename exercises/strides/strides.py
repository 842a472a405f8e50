"""Strides: how a tensor sits in memory, and views that cost nothing.

A tensor is a storage (a flat run of bytes) plus a size, a stride per dim and a storage
offset: element (i, j, ...) lives at storage index offset + i * stride[0] + j * stride[1]
+ .... Transposing, broadcasting and sliding windows only change that arithmetic, so they
can be views that copy nothing. You build them with `as_strided` alone (transpose,
permute, expand, broadcast_to and unfold are forbidden), then write torch's contiguity
test and an overlap test for two tensors. The grader compares every view with torch's,
checks that it lives in the input's storage with torch's strides and offset and that no
op allocated memory, on non-contiguous inputs and slices, and checks is_contiguous and
shares_memory on many layouts.

Run the grader:   make check topic=strides
Hints:            exercises/strides/README.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def transpose_view(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """x with dims dim0 and dim1 swapped, as x.transpose(dim0, dim1): a view.

    Args:
        x: (...) any shape with at least one dim, any dtype and device; may be
            non-contiguous or a slice of a larger tensor (a storage offset).
        dim0, dim1: dims to swap; negative counts from the end; they may be equal.

    Returns:
        A view of x's storage (no copy) with the sizes and strides of dim0 and dim1
        swapped and x's storage offset: the same sizes, strides and offset as
        x.transpose(dim0, dim1).

    Rules: built with as_strided (or Tensor.as_strided); no transpose, t, permute,
    swapaxes/swapdims, movedim, mT/mH/T, adjoint, expand, broadcast_to, unfold, numpy or
    is_contiguous, whatever name reaches them; no op that allocates memory (no copy,
    clone, contiguous, torch.tensor); inputs unmodified.
    """
    raise NotImplementedError("strides.transpose_view")


def broadcast_view(x: Tensor, shape: Sequence[int]) -> Tensor:
    """x broadcast to `shape`, as torch.broadcast_to(x, shape): a view with stride 0
    where a dim is repeated.

    The dims are aligned from the right. Each of x's dims must equal the target's or be
    1 (then it is repeated); -1 in shape keeps x's size; shape may have more dims than x
    (new leading dims, repeated).

    Args:
        x: (...) any shape (0-d too), any dtype and device; may be non-contiguous or a
            slice of a larger tensor.
        shape: the target sizes, a sequence of ints with at least x.dim() entries.

    Returns:
        A view of x's storage (no copy) of size `shape`, with stride 0 in every new or
        repeated dim, x's stride elsewhere, and x's storage offset: the same as
        torch.broadcast_to(x, shape).

    Raises:
        ValueError: if shape has fewer dims than x, uses -1 for a new leading dim, or
            asks a dim of x of size n != 1 to become m != n.

    Rules: as transpose_view's.
    """
    raise NotImplementedError("strides.broadcast_view")


def sliding_window_view(x: Tensor, size: int, step: int = 1) -> Tensor:
    """Every window of `size` consecutive elements of the last dim, `step` apart, as
    x.unfold(-1, size, step): a view.

    out[..., w, i] = x[..., w * step + i] for w in [0, n), n = (L - size) // step + 1.

    Args:
        x: (..., L), any number of leading dims (1-D too), any dtype and device; may be
            non-contiguous (the last dim need not have stride 1) or a slice of a larger
            tensor.
        size: window length, 1 <= size <= L.
        step: distance between window starts, >= 1.

    Returns:
        (..., n, size): a view of x's storage (no copy; overlapping windows share
        elements), with x's leading strides, stride step * x.stride(-1) for the windows,
        x.stride(-1) within a window, and x's storage offset, as x.unfold(-1, size, step).

    Raises:
        ValueError: if size < 1, step < 1 or size > L.

    Rules: as transpose_view's.
    """
    raise NotImplementedError("strides.sliding_window_view")


def is_contiguous(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """Whether a tensor of this size and stride is contiguous, by torch's definition
    (torch.empty_strided(shape, stride).is_contiguous()).

    Contiguous means row-major with no gaps: walking the dims from the last to the first,
    each dim's stride is the product of the sizes after it. Dims of size 1 are ignored
    (their stride is never used), and a tensor with no elements is contiguous whatever
    its strides.

    Args:
        shape: sizes, a sequence of non-negative ints (empty for a 0-d tensor).
        stride: strides, non-negative ints, one per dim.

    Returns:
        A Python bool.

    Rules: no Tensor.is_contiguous, whatever name reaches it: plain Python on the two
    sequences is enough.
    """
    raise NotImplementedError("strides.is_contiguous")


def shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether the memory ranges of a and b overlap.

    A tensor's range is the bytes from its first element (a.data_ptr(), which includes
    the storage offset) to the end of its last element: the element at the largest
    offset, sum over dims of (size - 1) * stride, plus its element size. Two tensors
    share memory when these byte ranges intersect. The test is on ranges, not on the
    exact sets of elements (like numpy.may_share_memory): x[::2] and x[1::2] interleave
    without a common element, yet their ranges overlap, so they count as sharing.
    Disjoint slices of one tensor (x[:4] and x[4:]) do not share memory, although they
    share a storage.

    Args:
        a, b: tensors of any shapes, dtypes (element sizes may differ: a float64 tensor
            and an int8 view of its bytes) and strides (stride 0 too), on any device.

    Returns:
        A Python bool: False if either has no elements, or they are on different
        devices; else whether the byte ranges intersect.

    Rules: inputs unmodified; no numpy.
    """
    raise NotImplementedError("strides.shares_memory")
