"""Variant: update() writes with index_copy_ at the positions' indices, attention is torch's
F.scaled_dot_product_attention with an additive float mask on every call, and generate
runs under torch.inference_mode() with the ids preallocated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    def __init__(self, batch_size, n_heads, max_seq_len, head_dim, *, dtype=torch.float32, device=None):
        self.k = torch.zeros(batch_size, n_heads, max_seq_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, k_new, v_new):
        t = k_new.shape[-2]
        if self.length + t > self.k.shape[-2]:
            raise ValueError(f"no room for {t} more positions")
        index = torch.arange(self.length, self.length + t, device=self.k.device)
        self.k.index_copy_(2, index, k_new)
        self.v.index_copy_(2, index, v_new)
        self.length += t
        return self.k[..., : self.length, :], self.v[..., : self.length, :]

    def reset(self):
        self.length = 0


def attend_with_cache(q, k_new, v_new, cache=None):
    if cache is None:
        k, v = k_new, v_new
    else:
        k, v = cache.update(k_new, v_new)
    t_q, t_k = q.shape[-2], k.shape[-2]
    blocked = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).triu(t_k - t_q + 1)
    bias = torch.zeros(t_q, t_k, dtype=q.dtype, device=q.device).masked_fill(blocked, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


# ---------------------------------------------------------------- the model (given)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, C = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, C // self.n_heads)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        y = attend_with_cache(q, k, v, cache)  # (B, H, T, D)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """A small decoder-only transformer: token + learned position embeddings, pre-norm
    blocks, a final LayerNorm and a linear head."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int, max_seq_len: int) -> None:
        super().__init__()
        self.n_heads, self.max_seq_len = n_heads, max_seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        """ids (B, T) -> logits (B, T, vocab_size). With caches (one per block), the ids
        are the positions after the caches[0].length already stored."""
        B, T = ids.shape
        start = caches[0].length if caches is not None else 0
        if start + T > self.max_seq_len:
            raise ValueError(f"positions {start}..{start + T - 1} exceed max_seq_len={self.max_seq_len}")
        pos = torch.arange(start, start + T, device=ids.device)  # (T,)
        x = self.tok_emb(ids) + self.pos_emb(pos)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None)
        return self.head(self.norm(x))  # (B, T, V)

    def new_caches(self, batch_size: int, max_seq_len: int | None = None) -> list[KVCache]:
        """One empty KVCache per block, in the model's dtype and on its device."""
        w = self.head.weight
        head_dim = w.shape[1] // self.n_heads
        size = max_seq_len or self.max_seq_len
        return [
            KVCache(batch_size, self.n_heads, size, head_dim, dtype=w.dtype, device=w.device) for _ in self.blocks
        ]


def generate(model, prompt, max_new_tokens, *, use_cache=True):
    model.eval()
    B, T0 = prompt.shape
    ids = prompt.new_zeros(B, T0 + max_new_tokens)
    ids[:, :T0] = prompt
    with torch.inference_mode():
        caches = model.new_caches(B, T0 + max_new_tokens) if use_cache else None
        for pos in range(T0, T0 + max_new_tokens):
            if not use_cache:
                logits = model(ids[:, :pos])
            elif pos == T0:
                logits = model(ids[:, :T0], caches)
            else:
                logits = model(ids[:, pos - 1 : pos], caches)
            ids[:, pos] = logits[:, -1].argmax(-1)
    return ids
