"""Variant: bool masks and the causal mask become one float bias of 0 / -inf, added to the scores once.
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
    # Blocked above the diagonal that starts at key t_k - t_q.
    return ~torch.ones(t_q, t_k, dtype=torch.bool, device=device).triu(diagonal=t_k - t_q + 1)


def _bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A float mask as is; a bool mask as 0 where allowed and -inf where blocked."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)  # a float32 mask must not promote half-precision scores
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None):
    """softmax(q @ k^T * scale + bias) @ v; a bool mask is True where attending is allowed."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    bias = None if mask is None else _bias(mask, scores.dtype)
    if is_causal:
        causal = _bias(causal_mask(t_q, t_k, device=q.device), scores.dtype)
        bias = causal if bias is None else bias + causal  # -inf wins over anything finite
    if bias is not None:
        scores = scores + bias
    return (torch.softmax(scores, dim=-1) @ v).to(q.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q, k, v and output projections."""

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_size = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, context=None, *, mask=None, is_causal=False):
        if context is None:
            context = x
        B, T, d_model = x.shape
        S = context.shape[1]
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_size).transpose(1, 2)
        k = self.k_proj(context).view(B, S, self.n_heads, self.head_size).transpose(1, 2)
        v = self.v_proj(context).view(B, S, self.n_heads, self.head_size).transpose(1, 2)
        y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
        return self.out_proj(y.transpose(1, 2).contiguous().view(B, T, d_model))
