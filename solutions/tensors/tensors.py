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
    # BEGIN SOLUTION
    if not x.is_floating_point():
        # int64 holds every difference and square of narrower integers exactly.
        x, y = x.long(), y.long()
    # Broadcasting: (N, 1, D) - (1, M, D) -> (N, M, D), every pair's difference at once.
    diff = x.unsqueeze(1) - y.unsqueeze(0)  # (N, M, D)
    # A sum of squares is never negative, and equal rows give exactly 0.
    return diff.square().sum(dim=-1)  # (N, M)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # gather needs an index of the output's full shape: each of the D features of row
    # (b, k) reads x[b, idx[b, k], d]. expand repeats idx over D without copying it.
    index = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # (B, K, D)
    return torch.gather(x, 1, index)  # (B, K, D)
    # END SOLUTION


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
    # BEGIN SOLUTION
    if num_classes == -1:
        if labels.numel() == 0:
            raise ValueError("one_hot: cannot infer num_classes from an empty tensor")
        num_classes = int(labels.max()) + 1
    if labels.numel() > 0 and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes})")
    classes = torch.arange(num_classes, device=labels.device)  # (C,)
    # Broadcasting: (..., 1) == (C,) -> (..., C) bool, then int64 as torch returns.
    return (labels.unsqueeze(-1) == classes).long()  # (..., C)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # float32 at least: half sums overflow, integer means are fractions.
    acc = torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
    # where (not x * mask): 0 * inf is nan, so multiplying would let masked-out infs in.
    total = torch.where(mask, x.to(acc), 0.0).sum(dim=dim)  # x's shape without dim
    # The count of the broadcast mask: a (B, 1, D) mask covers T positions along dim 1.
    count = mask.expand(x.shape).sum(dim=dim)  # int64, same shape as total
    # clamp, not where(count > 0, total / count, 0): that where would still compute
    # 0 / 0 = nan, and its gradient (0 times 1/0) is nan too.
    out = total / count.clamp(min=1)
    return out.to(x.dtype) if x.is_floating_point() else out
    # END SOLUTION


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
    # BEGIN SOLUTION
    length = x.shape[-1]
    if size < 1 or step < 1 or size > length:
        raise ValueError(f"sliding_windows: need 1 <= size <= {length} and step >= 1, got size={size}, step={step}")
    n = (length - size) // step + 1  # windows that fit; + 1 counts the one at 0
    starts = torch.arange(n, device=x.device) * step  # (n,)
    # Broadcasting: (n, 1) + (size,) -> (n, size), the position of every window element.
    index = starts.unsqueeze(-1) + torch.arange(size, device=x.device)  # (n, size)
    # Advanced indexing of the last dim with an (n, size) index -> (..., n, size). It
    # reads through x's strides, so non-contiguous inputs need no special case.
    return x[..., index]  # (..., n, size)
    # END SOLUTION
