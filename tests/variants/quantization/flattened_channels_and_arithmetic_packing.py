"""Variant: channels moved first and flattened (movedim + reshape) before one amax per row;
w multiplied by the reciprocal of its scales (torch's own way, which rounds a few near-ties
differently from division); int4 nibbles packed and unpacked with arithmetic (low + 16 * high,
// 16 and % 16) in int16; int8_linear as F.linear with the integer weight, then torch.addcmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quantize_per_channel(w: Tensor, *, bits: int = 8, axis: int = 0):
    if bits not in range(2, 9):
        raise ValueError("bits must be in 2..8")
    qmax = (1 << (bits - 1)) - 1
    axis = axis if axis >= 0 else axis + w.dim()
    rows = w.float().movedim(axis, 0).reshape(w.shape[axis], -1)  # (C, everything else)
    amax = rows.abs().amax(dim=1)
    scale = amax / qmax
    scale = scale.masked_fill(amax == 0, 1.0)
    inv = (1.0 / scale).reshape([-1 if d == axis else 1 for d in range(w.dim())])
    q = (w.float() * inv).round().clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: Tensor, scale: Tensor, *, axis: int = 0) -> Tensor:
    moved = q.movedim(axis, -1).float() * scale.float()  # channels last broadcast against (C,)
    return moved.movedim(-1, axis)


def int8_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    y = F.linear(x, q.to(x.dtype))  # (..., out)
    if bias is None:
        return y * scale.to(x.dtype)
    return torch.addcmul(bias, y, scale.to(x.dtype))


def quantize_int4_grouped(w: Tensor, *, group_size: int = 32):
    if w.dim() != 2 or group_size <= 0 or w.shape[1] % group_size != 0 or w.shape[1] % 2 != 0:
        raise ValueError("w must be (out, in) with in even and divisible by group_size")
    n_out, n_in = w.shape
    g = w.float().view(n_out, -1, group_size)
    amax = g.abs().max(dim=2).values
    scales = torch.where(amax == 0, torch.ones_like(amax), amax / 7)
    q = (g / scales.unsqueeze(2)).round().clamp(-7, 7).to(torch.int16).view(n_out, n_in) + 8
    pairs = q.view(n_out, n_in // 2, 2)
    return (pairs[..., 0] + 16 * pairs[..., 1]).to(torch.uint8), scales


def dequantize_int4_grouped(packed: Tensor, scales: Tensor, *, group_size: int = 32) -> Tensor:
    p = packed.to(torch.int16)
    both = torch.stack([p % 16, p // 16], dim=2).flatten(1) - 8  # (out, in)
    n_out, n_in = both.shape
    return (both.float().view(n_out, n_in // group_size, group_size) * scales.float().unsqueeze(2)).view(n_out, n_in)
