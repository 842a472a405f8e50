"""Mistake: a bool mask zeroes the weights after the softmax, so the remaining weights no longer sum to 1.

caught-by: test_matches_torch, test_mha_matches_torch, test_masked_weights_sum_to_one
hint: 3
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
    t_q, t_k = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., t_q, t_k)
    if is_causal:
        allowed = causal_mask(t_q, t_k, device=q.device)
        if mask is None:
            mask = allowed
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:
            mask = mask.masked_fill(~allowed, float("-inf"))
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if mask is not None and mask.dtype == torch.bool:
        weights = weights.masked_fill(~mask, 0.0)  # MISTAKE: must mask the scores before the softmax
    return (weights @ v).to(q.dtype)


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
        B, T, d_model = x.shape
        S = context.shape[1]
        h = self.n_heads
        hs = d_model // h
        q = self.q_proj(x).view(B, T, h, hs).transpose(1, 2)  # (B, h, T, hs)
        k = self.k_proj(context).view(B, S, h, hs).transpose(1, 2)  # (B, h, S, hs)
        v = self.v_proj(context).view(B, S, h, hs).transpose(1, 2)  # (B, h, S, hs)
        y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)  # (B, h, T, hs)
        y = y.transpose(1, 2).reshape(B, T, d_model)  # (B, T, d_model)
        return self.out_proj(y)
