"""Variant: MultiHeadAttention splits heads with unflatten + movedim and merges them with movedim + flatten.
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
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None):
    """softmax(q @ k^T * scale + mask) @ v; a bool mask is True where attending is allowed."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = (q * scale) @ k.mT  # scaling q first: fewer multiplications than scaling the scores
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.to(scores.dtype)
    return (scores.softmax(-1) @ v).to(q.dtype)


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

    def split(self, t: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, h, T, hs)."""
        return t.unflatten(-1, (self.n_heads, -1)).movedim(-2, 1)

    def forward(self, x, context=None, *, mask=None, is_causal=False):
        if context is None:
            context = x
        q, k, v = self.split(self.q_proj(x)), self.split(self.k_proj(context)), self.split(self.v_proj(context))
        y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)  # (B, h, T, hs)
        return self.out_proj(y.movedim(1, -2).flatten(-2))  # (B, T, h, hs) -> (B, T, d_model)
