"""A KV cache for fast greedy decoding.

A decoder-only transformer predicts one token at a time. Without a cache, every step
runs the model over the whole sequence again, although the keys and values of the
earlier positions have not changed: n new tokens cost O(n^2) work. With a cache, each
layer keeps the keys and values it has already computed in preallocated storage, and
each step runs the model on the newest token only.

You write the cache (KVCache), the attention that reads it (attend_with_cache) and
greedy decoding with and without it (generate). TinyDecoder, the model, is given: its
attention layers call your attend_with_cache. The grader compares your values with
torch's own attention and a float64 forward pass, checks that the cache returns views
of fixed storage, counts the model calls and FLOPs of generation, and times cached
against uncached decoding.

Run the grader:   make check topic=kv_cache
Hints:            exercises/kv_cache/README.md
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Keys and values of one attention layer, in storage allocated once.

    Args:
        batch_size, n_heads, max_seq_len, head_dim: the storage holds keys and values
            of shape (batch_size, n_heads, max_seq_len, head_dim) each.
        dtype, device: of the storage (the model's, so nothing is converted later).

    Attributes:
        length: int, how many positions are stored (0 after construction and reset()).

    The storage is allocated in __init__ and never again: update() writes into it and
    returns views of it.
    """

    def __init__(
        self,
        batch_size: int,
        n_heads: int,
        max_seq_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        # BEGIN SOLUTION
        shape = (batch_size, n_heads, max_seq_len, head_dim)
        # Allocated once, at full size: growing a tensor means copying all of it.
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (B, H, T_max, D)
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # (B, H, T_max, D)
        self.max_seq_len = max_seq_len
        self.length = 0
        # END SOLUTION

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Append the keys and values of t new positions, at position `length`.

        Args:
            k_new, v_new: (B, H, t, D), t >= 1.

        Returns:
            (keys, values), each (B, H, length, D) with the new `length`: every position
            stored so far, as views of the cache's storage (no copy of the history).

        Raises:
            ValueError: if length + t > max_seq_len; the cache is then left unchanged.

        The same aten ops for any t (no Python loop over positions), on every call.
        """
        # BEGIN SOLUTION
        start, end = self.length, self.length + k_new.shape[-2]
        # Check before writing anything: a refused write must leave the cache as it was.
        if end > self.max_seq_len:
            raise ValueError(f"KVCache holds {self.max_seq_len} positions: cannot add {end - start} to the {start} stored")
        # Slice assignment copies into the existing storage (an in-place copy_).
        self.keys[:, :, start:end] = k_new
        self.values[:, :, start:end] = v_new
        self.length = end
        # Basic slicing gives views: the callers see the stored history without a copy.
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, H, length, D) each
        # END SOLUTION

    def reset(self) -> None:
        """Empty the cache (length 0), keeping its storage for reuse."""
        # BEGIN SOLUTION
        # The old contents need no clearing: positions >= length are never read.
        self.length = 0
        # END SOLUTION


def attend_with_cache(q: Tensor, k_new: Tensor, v_new: Tensor, cache: KVCache | None = None) -> Tensor:
    """Causal attention of the newest t positions over every stored position.

    Args:
        q, k_new, v_new: (B, H, t, D) queries, keys and values of the newest t positions.
        cache: if given, k_new and v_new are appended to it first, and the queries
            attend over all its keys (t_k = cache.length after the update); if None,
            plain causal self-attention over the t positions (t_k = t).

    Returns:
        (B, H, t, D) in q's dtype: softmax(q @ k^T / sqrt(D) + causal mask) @ v, the
        mask aligned bottom-right (query i is position t_k - t + i and sees keys
        0 .. t_k - t + i).

    F.scaled_dot_product_attention is allowed, but note that its is_causal=True
    aligns the mask top-left when t != t_k.
    """
    # BEGIN SOLUTION
    if cache is not None:
        k, v = cache.update(k_new, v_new)  # (B, H, t_k, D), all stored positions
    else:
        k, v = k_new, v_new
    t_q, t_k = q.shape[-2], k.shape[-2]
    if t_q == 1:
        # One new token is the last position: it may see every key, so no mask.
        return F.scaled_dot_product_attention(q, k, v)
    # Bottom-right: the queries are the last t_q of the t_k positions, so the triangle
    # is shifted right by t_k - t_q (is_causal=True would anchor it top-left).
    mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)  # (t_q, t_k)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, t_q, D)
    # END SOLUTION


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


# ---------------------------------------------------------------- decoding


def generate(model: TinyDecoder, prompt: Tensor, max_new_tokens: int, *, use_cache: bool = True) -> Tensor:
    """Greedy decoding: append the most likely next token max_new_tokens times.

    Args:
        model: a TinyDecoder; generate puts it in eval mode and runs it under
            torch.no_grad().
        prompt: (B, T0) int64 token ids, T0 >= 1; not modified.
        max_new_tokens: n >= 1; T0 + n <= model.max_seq_len.
        use_cache: with the cache, the model runs n times: once on the whole prompt
            (with fresh caches from model.new_caches), then once on each new token
            but the last. Without it, step i runs the model on the whole sequence
            so far (no caches).

    Returns:
        (B, T0 + n) int64 on prompt's device: the prompt followed by the n new tokens.
    """
    # BEGIN SOLUTION
    model.eval()
    B, T0 = prompt.shape
    out = torch.empty(B, T0 + max_new_tokens, dtype=prompt.dtype, device=prompt.device)
    out[:, :T0] = prompt  # a new tensor: the prompt itself stays unchanged
    with torch.no_grad():
        if use_cache:
            caches = model.new_caches(B, T0 + max_new_tokens)
            logits = model(prompt, caches)  # prefill: every prompt position at once
            for i in range(max_new_tokens):
                out[:, T0 + i] = logits[:, -1].argmax(dim=-1)
                if i + 1 < max_new_tokens:  # the last token needs no forward pass
                    logits = model(out[:, T0 + i : T0 + i + 1], caches)  # (B, 1, V)
        else:
            for i in range(max_new_tokens):
                logits = model(out[:, : T0 + i])  # (B, T0 + i, V), all recomputed
                out[:, T0 + i] = logits[:, -1].argmax(dim=-1)
    return out
    # END SOLUTION
