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
    # BEGIN SOLUTION
    if t_k is None:
        t_k = t_q
    if t_k < t_q:
        raise ValueError(f"causal_mask needs t_k >= t_q, got t_q={t_q}, t_k={t_k}")
    # Bottom-right alignment is a lower triangle shifted right by the offset of
    # the first query, t_k - t_q.
    ones = torch.ones(t_q, t_k, dtype=torch.bool, device=device)
    return ones.tril(diagonal=t_k - t_q)
    # END SOLUTION


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
    # BEGIN SOLUTION
    t_q, t_k = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., t_q, t_k)

    if is_causal:
        allowed = causal_mask(t_q, t_k, device=q.device)  # (t_q, t_k)
        if mask is not None and mask.dtype == torch.bool:
            mask = mask & allowed  # both must allow
        elif mask is not None:
            mask = mask.masked_fill(~allowed, float("-inf"))  # float: add -inf too
        else:
            mask = allowed
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            # In q's dtype: a float32 mask must not promote half-precision scores.
            scores = scores + mask.to(scores.dtype)

    # softmax subtracts the row maximum internally, so large scores cannot overflow.
    weights = torch.softmax(scores, dim=-1)  # (..., t_q, t_k), rows sum to 1
    return weights @ v  # (..., t_q, d_v)
    # END SOLUTION


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
        # BEGIN SOLUTION
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # END SOLUTION

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
        # BEGIN SOLUTION
        if context is None:
            context = x
        B, T, d_model = x.shape
        S = context.shape[1]
        h = self.n_heads
        # Split the model dimension into heads, then move heads before time so
        # each head attends independently: (B, T, d_model) -> (B, h, T, hs).
        q = self.q_proj(x).view(B, T, h, d_model // h).transpose(1, 2)  # (B, h, T, hs)
        k = self.k_proj(context).view(B, S, h, d_model // h).transpose(1, 2)  # (B, h, S, hs)
        v = self.v_proj(context).view(B, S, h, d_model // h).transpose(1, 2)  # (B, h, S, hs)
        y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)  # (B, h, T, hs)
        # Put the heads side by side again; transpose made y non-contiguous.
        y = y.transpose(1, 2).reshape(B, T, d_model)  # (B, T, d_model)
        return self.out_proj(y)
        # END SOLUTION
