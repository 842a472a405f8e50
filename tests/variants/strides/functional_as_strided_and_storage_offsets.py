"""Variant: torch.as_strided (the function) everywhere; transpose through a permutation of
(size, stride) pairs; broadcast by padding x's layout on the left with size-1 dims;
is_contiguous by dropping the size-1 dims first; shares_memory from the storage's
address plus the offset in bytes, with inclusive last bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def transpose_view(x: Tensor, dim0: int, dim1: int) -> Tensor:
    pairs = list(zip(x.size(), x.stride()))
    i, j = dim0 if dim0 >= 0 else dim0 + x.ndim, dim1 if dim1 >= 0 else dim1 + x.ndim
    order = list(range(x.ndim))
    order[i], order[j] = order[j], order[i]
    size = [pairs[d][0] for d in order]
    stride = [pairs[d][1] for d in order]
    return torch.as_strided(x, size, stride, storage_offset=x.storage_offset())


def broadcast_view(x: Tensor, shape) -> Tensor:
    target = tuple(shape)
    pad = len(target) - x.ndim
    if pad < 0:
        raise ValueError("too few dims")
    sizes = (1,) * pad + tuple(x.size())
    strides = (0,) * pad + tuple(x.stride())
    out_size, out_stride = [], []
    for k, (have, s, want) in enumerate(zip(sizes, strides, target)):
        if want == -1:
            if k < pad:
                raise ValueError("-1 for a new dim")
            want = have
        if have == want:
            out_size.append(want)
            out_stride.append(s if k >= pad else 0)
        elif have == 1:
            out_size.append(want)
            out_stride.append(0)
        else:
            raise ValueError(f"{have} cannot broadcast to {want}")
    return torch.as_strided(x, out_size, out_stride, storage_offset=x.storage_offset())


def sliding_window_view(x: Tensor, size: int, step: int = 1) -> Tensor:
    if size <= 0 or step <= 0 or size > x.size(-1):
        raise ValueError("bad window")
    count = 1 + (x.size(-1) - size) // step
    s = x.stride()
    return torch.as_strided(x, (*x.size()[:-1], count, size), (*s[:-1], s[-1] * step, s[-1]), storage_offset=x.storage_offset())


def is_contiguous(shape, stride) -> bool:
    if 0 in tuple(shape):
        return True
    kept = [(n, s) for n, s in zip(shape, stride) if n != 1]
    want = 1
    for n, s in reversed(kept):
        if s != want:
            return False
        want = want * n
    return True


def shares_memory(a: Tensor, b: Tensor) -> bool:
    if a.device != b.device or not a.numel() or not b.numel():
        return False

    def bounds(t: Tensor):
        first = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
        far = max(0, sum((n - 1) * s for n, s in zip(t.size(), t.stride())))
        return first, first + (far + 1) * t.element_size() - 1  # inclusive last byte

    (a_lo, a_hi), (b_lo, b_hi) = bounds(a), bounds(b)
    return a_lo <= b_hi and b_lo <= a_hi
