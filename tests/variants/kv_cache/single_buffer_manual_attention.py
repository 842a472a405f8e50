"""Variant: keys and values share one buffer (2, B, H, T_max, D) written with narrow().copy_(),
length is a property, attention is hand-written (matmul, masked_fill, softmax), and generate
grows the ids with torch.cat under a @torch.no_grad() decorator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    def __init__(self, batch_size, n_heads, max_seq_len, head_dim, *, dtype=torch.float32, device=None):
        self._kv = torch.empty(2, batch_size, n_heads, max_seq_len, head_dim, dtype=dtype, device=device)
        self._len = 0

    @property
    def length(self) -> int:
        return self._len

    def update(self, k_new, v_new):
        t = k_new.shape[2]
        if self._len + t > self._kv.shape[3]:
            raise ValueError("KVCache is full")
        self._kv[0].narrow(2, self._len, t).copy_(k_new)
        self._kv[1].narrow(2, self._len, t).copy_(v_new)
        self._len += t
        return self._kv[0].narrow(2, 0, self._len), self._kv[1].narrow(2, 0, self._len)

    def reset(self):
        self._len = 0


def attend_with_cache(q, k_new, v_new, cache=None):
    k, v = cache.update(k_new, v_new) if cache is not None else (k_new, v_new)
    t_q, t_k = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, t_q, t_k)
    query_pos = torch.arange(t_k - t_q, t_k, device=q.device)[:, None]  # absolute positions
    key_pos = torch.arange(t_k, device=q.device)[None, :]
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


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


@torch.no_grad()
def generate(model, prompt, max_new_tokens, *, use_cache=True):
    model.eval()
    ids = prompt
    caches = model.new_caches(prompt.shape[0]) if use_cache else None
    logits = model(ids, caches)
    for i in range(max_new_tokens):
        nxt = logits[:, -1:].argmax(dim=-1)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
        if i + 1 < max_new_tokens:
            logits = model(nxt, caches) if use_cache else model(ids)
    return ids
