"""Variant: pairwise distances as an einsum of the broadcast differences; batched_gather by
advanced indexing with a broadcast batch index; one_hot by scatter_ into zeros;
masked_mean with masked_fill, a float32-accumulating sum and a count from broadcast_to;
sliding_windows as a zero-copy as_strided view that honours x's strides and offset.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_sq_distances(x: Tensor, y: Tensor) -> Tensor:
    if x.dtype.is_floating_point:
        a, b = x, y
    else:
        a, b = x.to(torch.int64), y.to(torch.int64)
    diff = a[:, None, :] - b[None, :, :]
    if not diff.is_floating_point():
        return (diff * diff).sum(-1)
    return torch.einsum("nmd,nmd->nm", diff, diff)


def batched_gather(x: Tensor, idx: Tensor) -> Tensor:
    batch = torch.arange(x.shape[0], device=x.device)[:, None]  # (B, 1) broadcasts against (B, K)
    return x[batch, idx]


def one_hot(labels: Tensor, num_classes: int = -1) -> Tensor:
    if labels.numel() == 0 and num_classes < 0:
        raise ValueError("empty labels: give num_classes")
    if labels.numel():
        lo, hi = labels.min().item(), labels.max().item()
        if num_classes < 0:
            num_classes = hi + 1
        if lo < 0 or hi >= num_classes:
            raise ValueError("label out of range")
    out = torch.zeros(*labels.shape, num_classes, dtype=torch.int64, device=labels.device)
    return out.scatter_(-1, labels.to(torch.int64).unsqueeze(-1), 1)


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    full = torch.broadcast_to(mask, x.shape)
    total = x.masked_fill(~full, 0).sum(dim=dim, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    n = full.sum(dim=dim).to(total.dtype)
    out = total / torch.maximum(n, torch.ones_like(n))
    return out.to(x.dtype) if x.dtype.is_floating_point else out


def sliding_windows(x: Tensor, size: int, step: int) -> Tensor:
    length = x.shape[-1]
    if not (1 <= size <= length) or step < 1:
        raise ValueError("bad window")
    n = 1 + (length - size) // step
    *lead, last = x.stride()
    return x.as_strided((*x.shape[:-1], n, size), (*lead, step * last, last), x.storage_offset())
