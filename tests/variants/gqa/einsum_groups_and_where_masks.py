"""Variant: repeat_kv by stacking copies on a new axis after the heads; attention with
einsum over a (B, H_kv, G, T, D) view of q (einsum folds the group into the matmul rows,
so nothing is repeated), masks applied with torch.where, the causal mask from index
arithmetic, and a manual softmax with the row maximum subtracted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    return torch.stack([x] * n_rep, dim=2).flatten(1, 2)  # (B, H_kv, n_rep, S, D) -> (B, H, S, D)


def grouped_query_attention(q, k, v, *, mask=None, is_causal=False, scale=None):
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if H % H_kv:
        raise ValueError("H must be a multiple of H_kv")
    G = H // H_kv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = torch.einsum("bkgtd,bksd->bkgts", q.reshape(B, H_kv, G, T, D), k) * scale
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    if is_causal:
        i = torch.arange(T, device=q.device)[:, None]
        j = torch.arange(S, device=q.device)[None, :]
        scores = torch.where(j <= i + (S - T), scores, neg_inf)
    if mask is not None:
        m = mask
        while m.dim() < 4:
            m = m[None]
        m = m.expand(m.shape[0], H, m.shape[2], m.shape[3]).reshape(m.shape[0], H_kv, G, m.shape[2], m.shape[3])
        scores = torch.where(m, scores, neg_inf) if m.dtype == torch.bool else scores + m.to(scores.dtype)
    scores = scores - scores.amax(dim=-1, keepdim=True)
    e = scores.exp()
    weights = e / e.sum(dim=-1, keepdim=True)
    out = torch.einsum("bkgts,bksd->bkgtd", weights, v)
    return out.reshape(B, H, T, D)


class GroupedQueryAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, bias: bool = False) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError("bad head counts")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        hd = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, *, mask=None, is_causal=False):
        B, T, _ = x.shape
        q = self.q_proj(x).unflatten(-1, (self.n_heads, -1)).movedim(2, 1)
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, -1)).movedim(2, 1)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, -1)).movedim(2, 1)
        y = grouped_query_attention(q, k, v, mask=mask, is_causal=is_causal)
        return self.o_proj(y.movedim(1, 2).flatten(2))
