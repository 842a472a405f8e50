"""Variant: one bool `allowed` tensor (mask and causal combined) selects scores or -inf with torch.where.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def causal_mask(t_q: int, t_k: int | None = None, *, device=None) -> Tensor:
    """Bool (t_q, t_k) mask, True where query i may attend key j (bottom-right aligned)."""
    if t_k is None:
        t_k = t_q
    if t_k < t_q:
        raise ValueError(f"causal_mask needs t_k >= t_q, got t_q={t_q}, t_k={t_k}")
    offset = t_k - t_q
    rows = torch.arange(t_q, device=device).unsqueeze(1)
    cols = torch.arange(t_k, device=device).unsqueeze(0)
    return cols - rows <= offset


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None):
    """softmax(q @ k^T * scale + mask) @ v; a bool mask is True where attending is allowed."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1 / math.sqrt(q.size(-1))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    allowed = None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask
    elif mask is not None:
        scores = scores + mask.to(scores.dtype)
    if is_causal:
        causal = causal_mask(t_q, t_k, device=q.device)
        allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
        scores = torch.where(allowed, scores, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, v).to(q.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q, k, v and output projections."""

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, context=None, *, mask=None, is_causal=False):
        if context is None:
            context = x
        B, _, d_model = x.shape
        h = self.n_heads
        q = self.q_proj(x).reshape(B, -1, h, d_model // h).transpose(1, 2)
        k = self.k_proj(context).reshape(B, -1, h, d_model // h).transpose(1, 2)
        v = self.v_proj(context).reshape(B, -1, h, d_model // h).transpose(1, 2)
        y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
        return self.out_proj(y.transpose(1, 2).flatten(2))
