"""Variant: attention written out by hand (einsum scores, masked_fill with -inf, softmax in
float32), the padding mask applied as a boolean fill, heads split with unflatten/movedim;
the tie made the other way round (the embedding takes the head's Parameter); positions
read by slicing pos_emb.weight; blocks applied with functools.reduce.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn


def attend(q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None) -> Tensor:
    """q, k, v: (B, H, T, Dh); blocked: bool broadcastable to (B, H, T, T), True = may NOT attend."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.einsum("bhts,bhsd->bhtd", weights, v)


def mha(x: Tensor, projections, n_heads: int, blocked: Tensor | None) -> Tensor:
    wq, wk, wv, wo = projections
    split = [p(x).unflatten(-1, (n_heads, -1)).movedim(2, 1) for p in (wq, wk, wv)]  # (B, H, T, Dh)
    out = attend(*split, blocked)
    return wo(out.movedim(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, *, norm_first=False, activation="relu"):
        super().__init__()
        acts = {"relu": nn.ReLU(), "gelu": nn.GELU()}
        if activation not in acts or d_model % n_heads != 0:
            raise ValueError("bad EncoderBlock arguments")
        self.act = acts[activation]
        self.n_heads, self.norm_first = n_heads, norm_first
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, *, key_padding_mask=None):
        blocked = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        proj = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)

        def sa(h):
            return mha(h, proj, self.n_heads, blocked)

        def ff(h):
            return self.linear2(self.act(self.linear1(h)))

        if not self.norm_first:
            y = self.norm1(x + sa(x))
            return self.norm2(y + ff(y))
        y = x + sa(self.norm1(x))
        return y + ff(self.norm2(y))


class SwiGLU(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.up_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        g = self.gate_proj(x)
        return self.down_proj(g * torch.sigmoid(g) * self.up_proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, d_model, n_heads, d_hidden, *, eps=1e-6):
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm = nn.RMSNorm(d_model, eps=eps)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.mlp_norm = nn.RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, d_hidden)

    def forward(self, x):
        T = x.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        h = x + mha(self.attn_norm(x), (self.q_proj, self.k_proj, self.v_proj, self.o_proj), self.n_heads, future)
        return h + self.mlp(self.mlp_norm(h))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size, d_model, n_heads, n_layers, d_hidden, max_seq_len):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList([DecoderBlock(d_model, n_heads, d_hidden) for _ in range(n_layers)])
        self.norm = nn.RMSNorm(d_model, eps=1e-6)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight  # the same Parameter either way round

    def forward(self, ids):
        if ids.shape[1] > self.pos_emb.num_embeddings:
            raise ValueError("sequence too long")
        x = self.tok_emb(ids) + self.pos_emb.weight[: ids.shape[1]]
        x = functools.reduce(lambda h, block: block(h), self.blocks, x)
        return self.lm_head(self.norm(x))
