"""Grouped-query attention (GQA) and multi-query attention (MQA).

Decoding is limited by memory, and the KV cache is most of it: every step reads every
cached key and value. GQA shrinks the cache by letting groups of query heads share one
key/value head (LLaMA 2 70B and LLaMA 3: 8 KV heads for 64 query heads); MQA is the
extreme of one shared head, multi-head attention the other of one KV head per query head.
You write the head bookkeeping (which query head reads which KV head), attention that
never copies the shared keys and values out to every query head, and the module with its
smaller k and v projections. The grader compares your code with torch's own
F.scaled_dot_product_attention(..., enable_gqa=True) in float64, checks gradients, forbids
the fused kernels and repeat_interleave, and measures the tensors your code allocates.

Run the grader:   make check topic=gqa
Hints:            exercises/gqa/README.md
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat each key/value head n_rep times, next to itself.

    Key/value head j serves query heads j·n_rep .. (j+1)·n_rep - 1, so the output's head
    h is x's head h // n_rep: heads 0, 0, 1, 1, ... for n_rep = 2 (what
    torch.repeat_interleave(x, n_rep, dim=1) gives), never 0, 1, 0, 1, ... (x.repeat).

    Args:
        x: (B, H_kv, S, D) keys or values.
        n_rep: >= 1, the number of query heads per key/value head (H // H_kv).

    Returns:
        (B, H_kv·n_rep, S, D) in x's dtype on x's device (x itself, or a view of it, is
        fine for n_rep = 1). Gradients flow back to x.

    Rules: torch.repeat_interleave is forbidden (at the aten level too), and so are the
    fused attention kernels; inputs unmodified.
    """
    # BEGIN SOLUTION
    if n_rep == 1:
        return x
    B, H_kv, S, D = x.shape
    # A new axis right after the heads, expanded (a view, stride 0), then merged with the
    # heads: (B, H_kv, n_rep, S, D) -> (B, H_kv·n_rep, S, D), head j's copies side by side.
    return x[:, :, None].expand(B, H_kv, n_rep, S, D).reshape(B, H_kv * n_rep, S, D)
    # END SOLUTION


def grouped_query_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(q @ k^T * scale + mask) @ v where query head h reads key/value head h // (H / H_kv).

    The same result as F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
    scale=scale, enable_gqa=True) (with a bottom-right causal mask), without copying the
    keys and values out to every query head.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H_kv, S, D) keys; H must be a multiple of H_kv.
        v: (B, H_kv, S, D) values.
        mask: None, a bool tensor (True = may attend) or a float tensor added to the
            scores; broadcastable to (B, H, T, S) (its head dim, if it has one, indexes
            query heads).
        is_causal: also apply a causal mask aligned bottom-right, as in the attention
            kata: the T queries are the last T of S positions, so query i may attend key
            j exactly when j <= i + S - T (T <= S). Combines with `mask`.
        scale: multiplies the scores; defaults to 1 / sqrt(D).

    Returns:
        (B, H, T, D) in q's dtype on q's device (a float32 mask does not promote
        half-precision scores). Gradients flow to q, k and v.

    Raises:
        ValueError: if H is not a multiple of H_kv.

    Rules: no fused attention op (F.scaled_dot_product_attention or any aten attention
    kernel) and no torch.repeat_interleave; inputs unmodified. No tensor of B·H·S·D
    elements or more may be made when H_kv < H: the keys and values are never repeated
    out to H heads, not by repeat_kv, not by expand().reshape(), and not inside
    torch.matmul either (matmul copies an operand whose batch dims it has to broadcast,
    so k of shape (B, H_kv, 1, S, D) against q of shape (B, H_kv, G, T, D) is copied
    out to G heads). No Python loop over heads or groups (aten ops are counted).
    """
    # BEGIN SOLUTION
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if H % H_kv != 0:
        raise ValueError(f"the number of query heads ({H}) must be a multiple of the key/value heads ({H_kv})")
    G = H // H_kv  # query heads per key/value head
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    # Query heads j·G .. (j+1)·G - 1 share kv head j: fold the group into the query rows,
    # (B, H, T, D) -> (B, H_kv, G·T, D), so one plain batched matmul against the H_kv
    # heads of k does every group with no copy of k at all.
    qg = q.reshape(B, H_kv, G * T, D)  # (B, H_kv, G·T, D)
    scores = (qg @ k.transpose(-2, -1)) * scale  # (B, H_kv, G·T, S)
    scores = scores.view(B, H_kv, G, T, S)  # back to one row block per query head

    if is_causal:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # bottom-right
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b, h, t, s), h in {1, H}
        # The head dim indexes query heads: split it like the scores, (b, H, t, s) ->
        # (b, H_kv, G, t, s); expand is a view, so a (B, 1, 1, S) mask stays small.
        m = m.expand(m.shape[0], H, m.shape[2], m.shape[3]).unflatten(1, (H_kv, G))
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.to(scores.dtype)  # in q's dtype: no promotion by a float32 mask

    weights = torch.softmax(scores, dim=-1).view(B, H_kv, G * T, S)  # rows sum to 1
    out = weights @ v  # (B, H_kv, G·T, D)
    return out.view(B, H, T, D)
    # END SOLUTION


class GroupedQueryAttention(nn.Module):
    """Self-attention with n_heads query heads sharing n_kv_heads key/value heads.

    n_kv_heads = 1 is multi-query attention; n_kv_heads = n_heads is multi-head attention.

    Args:
        d_model: model width; must be divisible by n_heads. head_dim = d_model // n_heads.
        n_heads: query heads.
        n_kv_heads: key/value heads; must divide n_heads.
        bias: whether the four projections have a bias (LLaMA's have none).

    Attributes:
        n_heads, n_kv_heads: int.
        q_proj: nn.Linear(d_model, d_model, bias=bias).
        k_proj, v_proj: nn.Linear(d_model, n_kv_heads · head_dim, bias=bias).
        o_proj: nn.Linear(d_model, d_model, bias=bias).
        Nothing else has parameters.

    Raises:
        ValueError: if d_model % n_heads != 0 or n_heads % n_kv_heads != 0.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, bias: bool = False) -> None:
        super().__init__()
        # BEGIN SOLUTION
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        # The saving of GQA: keys and values have n_kv_heads heads, not n_heads.
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        # END SOLUTION

    def forward(self, x: Tensor, *, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Grouped-query self-attention over x.

        Args:
            x: (B, T, d_model).
            mask: bool (True = may attend) or float (added), broadcastable to (B, n_heads, T, T).
            is_causal: apply a causal mask as well.

        Returns:
            (B, T, d_model) in x's dtype. Head h of the queries is features
            h·head_dim .. (h+1)·head_dim - 1 of q_proj's output, and likewise for the
            key/value heads of k_proj and v_proj; query head h reads key/value head
            h // (n_heads / n_kv_heads); o_proj takes the heads side by side in order.
        """
        # BEGIN SOLUTION
        B, T, d_model = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_heads, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, hd).transpose(1, 2)  # (B, H_kv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, hd).transpose(1, 2)  # (B, H_kv, T, hd)
        y = grouped_query_attention(q, k, v, mask=mask, is_causal=is_causal)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, d_model)  # heads side by side again
        return self.o_proj(y)
        # END SOLUTION
