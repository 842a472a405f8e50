"""Variant: the table filled by slice assignment with exp/log frequencies; rope_cos_sin in
float64 angles (more precise than asked); apply_rope on the two halves with real arithmetic;
apply_rope_interleaved on even and odd features with real arithmetic, no complex numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_positions(n_positions: int, dim: int, *, base: float = 10000.0, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    if dim % 2 != 0:
        raise ValueError("odd dim")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    position = torch.arange(n_positions, device=device, dtype=work).unsqueeze(1)  # (P, 1)
    div_term = torch.exp(torch.arange(0, dim, 2, device=device, dtype=work) * (-math.log(base) / dim))  # (D/2,)
    pe = torch.zeros(n_positions, dim, device=device, dtype=work)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.to(dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32):
    if head_dim % 2 != 0:
        raise ValueError("odd head_dim")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, device=positions.device, dtype=torch.float64) * 2 / head_dim))
    freqs = torch.einsum("...t,f->...tf", positions.double(), inv_freq)  # (..., T, D/2)
    emb = freqs.repeat(*([1] * (freqs.dim() - 1)), 2)  # (..., T, D): both halves
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    c1, c2 = cos.chunk(2, dim=-1)
    s1, s2 = sin.chunk(2, dim=-1)
    out = torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), dim=-1)
    return out.to(x.dtype)


def apply_rope_interleaved(x: Tensor, positions: Tensor, *, base: float = 10000.0) -> Tensor:
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device).float() / d)
    theta = positions.float()[..., None] * inv_freq  # (..., T, D/2)
    if theta.dim() == 3:
        theta = theta[:, None]
    c, s = theta.cos(), theta.sin()
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    even, odd = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).reshape(x.shape)
    return out.to(x.dtype)
