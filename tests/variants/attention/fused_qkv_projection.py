"""Variant: the q, k and v weights are concatenated at call time so one F.linear computes all three projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        allowed = causal_mask(t_q, t_k, device=q.device)
        if mask is None:
            mask = allowed
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:
            mask = mask.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    return (torch.softmax(scores, dim=-1) @ v).to(q.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; q_proj, k_proj and v_proj are applied as one stacked matmul."""

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _stacked(self, *layers: nn.Linear) -> tuple[Tensor, Tensor | None]:
        """The weights (and biases) of `layers` stacked along the output dimension."""
        weight = torch.cat([layer.weight for layer in layers])
        bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
        return weight, bias

    def forward(self, x, context=None, *, mask=None, is_causal=False):
        B, T, d_model = x.shape
        if context is None:  # self-attention: one matmul for q, k and v
            q, k, v = F.linear(x, *self._stacked(self.q_proj, self.k_proj, self.v_proj)).chunk(3, dim=-1)
        else:  # cross-attention: q from x, k and v from context in one matmul
            q = self.q_proj(x)
            k, v = F.linear(context, *self._stacked(self.k_proj, self.v_proj)).chunk(2, dim=-1)
        h = self.n_heads
        q, k, v = (t.reshape(B, t.shape[1], h, d_model // h).transpose(1, 2) for t in (q, k, v))
        y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)  # (B, h, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d_model))
