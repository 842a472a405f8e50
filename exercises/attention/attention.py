"""Attention from scratch: causal masks, scaled dot-product attention, multi-head attention.

You rebuild what `torch.nn.functional.scaled_dot_product_attention` and
`torch.nn.MultiheadAttention` do, out of matmuls and a softmax. The grader compares
your code with torch's own ops on many shapes, masks and dtypes, checks the gradients,
forbids the fused attention kernels, and times your code against the reference.

Run the grader:   make check topic=attention
Hints:            exercises/attention/README.md
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def causal_mask(t_q: int, t_k: int | None = None, *, device=None) -> Tensor:
    """Boolean causal mask, aligned bottom-right.

    The t_q queries are the *last* t_q of t_k positions (as when decoding with a
    cache), so query i may attend key j exactly when j <= i + (t_k - t_q).

    Args:
        t_q: number of queries, >= 1.
        t_k: number of keys, >= t_q; defaults to t_q.
        device: device of the result.

    Returns:
        Bool tensor (t_q, t_k): True where query i may attend key j.

    Raises:
        ValueError: if t_k < t_q.
    """
    raise NotImplementedError("attention.causal_mask")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(q @ k^T * scale + mask) @ v, without torch's fused kernels.

    Args:
        q: (..., t_q, d) queries.
        k: (..., t_k, d) keys.
        v: (..., t_k, d_v) values. Leading dimensions of q, k and v broadcast.
        mask: None, a bool tensor (True = may attend, as in
            torch.nn.functional.scaled_dot_product_attention) or a float tensor
            added to the scores; broadcastable to (..., t_q, t_k).
        is_causal: also apply causal_mask(t_q, t_k); combines with `mask`.
        scale: multiplies the scores; defaults to 1 / sqrt(d).

    Returns:
        (..., t_q, d_v) in q's dtype and on q's device.

    Rules: no fused attention op (torch.nn.functional.scaled_dot_product_attention
    or any aten attention kernel, whatever name reaches it); inputs unmodified;
    no Python loop over batch or heads (its aten ops are counted, twice per size, so
    every call on the same input must do the same work).
    """
    raise NotImplementedError("attention.scaled_dot_product_attention")


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q, k, v and output projections.

    Args:
        d_model: model width; must be divisible by n_heads.
        n_heads: number of heads; each has d_model // n_heads dimensions.
        bias: whether the four projections have a bias.

    Attributes:
        n_heads: int.
        q_proj, k_proj, v_proj, out_proj: nn.Linear(d_model, d_model, bias=bias).

    Raises:
        ValueError: if d_model is not divisible by n_heads.
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True) -> None:
        super().__init__()
        raise NotImplementedError("attention.MultiHeadAttention.__init__")

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Self-attention over x, or cross-attention from x to context.

        Args:
            x: (B, T, d_model) the sequence the queries come from.
            context: (B, S, d_model) the sequence keys and values come from;
                defaults to x (self-attention, S = T).
            mask: bool (True = may attend) or float (added), broadcastable to
                (B, n_heads, T, S).
            is_causal: apply a bottom-right aligned causal mask as well.

        Returns:
            (B, T, d_model).
        """
        raise NotImplementedError("attention.MultiHeadAttention.forward")
