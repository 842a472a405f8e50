"""Tensors: broadcasting, gather, one-hot, masked means and sliding windows.

Five everyday tensor manipulations, each a handful of whole-tensor ops with no Python loop
over rows: all-pairs squared distances by broadcasting, a batched gather, one-hot
encoding, a mean over the positions a mask selects, and overlapping windows of a signal.
The grader compares each with torch's own ops (cdist, gather, F.one_hot, nanmean,
Tensor.unfold) on many shapes and dtypes (integer inputs, non-contiguous views), checks
the edge cases that break naive code (far-off points, rows with nothing masked in, labels
out of range, windows that do not fit), the gradients, and counts the aten ops to make
sure the work does not grow with the number of rows.

Run the grader:   make check topic=tensors
Hints:            exercises/tensors/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_sq_distances(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distance between every row of x and every row of y.

    out[i, j] = sum over d of (x[i, d] - y[j, d])^2, the same as
    torch.cdist(x, y) ** 2, computed by broadcasting the differences (N, 1, D) - (1, M, D).

    Args:
        x: (N, D), floating or integer, on any device; may be non-contiguous.
        y: (M, D), the same dtype and device as x.

    Returns:
        (N, M) on x's device, never negative (exactly 0 where two rows are equal).
        Floating inputs: x's dtype, as accurate as the broadcast differences in that dtype
        also for points far from the origin (x + 100): the expansion
        |x|^2 + |y|^2 - 2 x.y cancels catastrophically there (and can go negative), so do
        not use it. Integer (or bool) inputs of any width: exact distances as int64; the
        differences are taken in int64 (uint8 would wrap around, 3 - 5 = 254, and int16
        squares overflow).

    Rules: no torch.cdist, pdist, F.pairwise_distance or their aten kernels; inputs
    unmodified; no Python loop over rows (the grader counts aten ops at two sizes).
    """
    raise NotImplementedError("tensors.pairwise_sq_distances")


def batched_gather(x: Tensor, idx: Tensor) -> Tensor:
    """Pick rows of x per batch: out[b, k] = x[b, idx[b, k]].

    Args:
        x: (B, T, D), any dtype and device; may be non-contiguous.
        idx: (B, K) int64 on x's device, every value in [0, T). K may exceed T and
            indices may repeat.

    Returns:
        (B, K, D) in x's dtype, on x's device. Gradients flow back to x (a row picked
        twice gets both gradients).

    Rules: inputs unmodified; no Python loop over the batch (the grader counts aten ops
    at two batch sizes).
    """
    raise NotImplementedError("tensors.batched_gather")


def one_hot(labels: Tensor, num_classes: int = -1) -> Tensor:
    """One-hot encoding, as torch.nn.functional.one_hot.

    out[..., c] = 1 where labels[...] == c, else 0.

    Args:
        labels: (...) of any integer dtype (int64, int32, uint8, ...), any shape
            (a 0-d label too), on any device.
        num_classes: C, the number of classes; -1 (the default) infers
            C = labels.max() + 1.

    Returns:
        (..., C) int64 (whatever the labels' integer dtype), on labels' device.

    Raises:
        ValueError: if a label is negative or not below num_classes, or if num_classes
            is -1 and labels is empty (there is no maximum to infer C from). An empty
            labels tensor with an explicit num_classes gives (..., C) with no rows.

    Rules: no F.one_hot (or aten.one_hot); inputs unmodified; no Python loop over the
    labels (the grader counts aten ops at two sizes).
    """
    raise NotImplementedError("tensors.one_hot")


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of x over dim, counting only the positions where mask is True.

    out = sum(x where mask) / count(mask) along dim; 0 (not nan) where the mask has no
    True position along dim.

    Args:
        x: (...), floating or integer, on any device; may be non-contiguous.
        mask: bool, broadcastable to x's shape by torch's rules (aligned from the last
            dim, size-1 dims repeated; it never enlarges x): (B, T, 1) masks whole
            vectors of an x of (B, T, D), (B, 1, D) the same features at every t. A
            broadcast mask counts once per position it covers.
        dim: the dim to average over (negative counts from the end).

    Returns:
        x's shape without dim, on x's device. Floating x: x's dtype; float16 and
        bfloat16 are summed in float32 (a float16 sum of 64 values of 2000 is inf) and
        the result converted back. Integer or bool x: float32 (a true mean, not a floor
        division). Positions where mask is False do not affect the result, even if x
        holds inf or nan there; nor do they get a gradient. The gradient is finite
        everywhere, also where no position is True.

    Rules: no torch.nanmean; inputs unmodified; no Python loop over rows (the grader
    counts aten ops at two sizes).
    """
    raise NotImplementedError("tensors.masked_mean")


def sliding_windows(x: Tensor, size: int, step: int) -> Tensor:
    """Every window of `size` consecutive elements of the last dim, `step` apart, as
    x.unfold(-1, size, step).

    out[..., w, i] = x[..., w * step + i] for w in [0, n) and i in [0, size), where
    n = (L - size) // step + 1 windows fit (the last elements are left out when they
    do not fill a window).

    Args:
        x: (..., L), any dtype, any number of leading dims (1-D too), on any device; may
            be non-contiguous or a slice of a larger tensor.
        size: window length, 1 <= size <= L.
        step: distance between window starts, >= 1 (step > size leaves gaps).

    Returns:
        (..., n, size) in x's dtype, on x's device. It may be a copy or a view: here
        the values are graded (the strides kata builds the zero-copy view).

    Raises:
        ValueError: if size < 1, step < 1 or size > L.

    Rules: no unfold (Tensor.unfold or any aten *unfold* op); inputs unmodified; no
    Python loop over windows or rows (the grader counts aten ops at two sizes).
    """
    raise NotImplementedError("tensors.sliding_windows")
