"""Variant: top-p sorts ascending and drops the tail whose mass is at most 1 - p (Hugging
Face's formulation, made tie-inclusive by thresholding at the smallest kept logit); the
draw inverts the cumulative distribution with searchsorted on uniforms from the generator;
the penalty is an index_put on a copy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    return torch.div(logits, temperature)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")
    if p == 1:
        return logits.clone()
    asc = logits.sort(dim=-1).values  # (..., V), ascending
    probs = asc.double().softmax(dim=-1)
    tail = probs.cumsum(dim=-1)  # mass of this token and every less probable one
    # A token may go when it and everything below it hold less than 1 - p, i.e. the
    # tokens above it already reach p. Keep the rest; the top token always stays.
    drop = tail < 1 - p
    drop[..., -1] = False
    first_kept = drop.sum(dim=-1, keepdim=True)  # (..., 1): index of the smallest kept logit
    cutoff = asc.gather(-1, first_kept)
    return torch.where(logits >= cutoff, logits, torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature == 0:
        return logits.argmax(-1)
    x = apply_temperature(logits, temperature)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None:
        x = top_p_filter(x, top_p)
    probs = x.double().softmax(dim=-1)  # (..., V)
    cdf = probs.cumsum(dim=-1)  # (..., V)
    u = torch.rand(*x.shape[:-1], 1, generator=generator, device=x.device, dtype=torch.float64)  # (..., 1)
    # The first token whose cdf exceeds u * total: a zero-probability token never
    # exceeds its predecessor's cdf, so it is never chosen.
    ids = torch.searchsorted(cdf.contiguous(), (u * cdf[..., -1:]).contiguous(), right=True)  # (..., 1)
    return ids.clamp(max=x.shape[-1] - 1).squeeze(-1)


def apply_repetition_penalty(logits, prev_ids, penalty):
    if not penalty > 0:
        raise ValueError("penalty must be > 0")
    seen = logits.gather(-1, prev_ids)
    factor = torch.where(seen > 0, 1.0 / penalty, penalty).to(seen.dtype)  # where of two floats is float32
    out = logits.clone()
    out.scatter_(-1, prev_ids, seen * factor)  # duplicates write the same value
    return out
