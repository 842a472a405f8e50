"""Variant: draws with the Gumbel-max trick (argmax of log p + Gumbel noise from the
generator), finds top-k's cut-off with kthvalue, top-p's in probability space, and
penalises through a presence mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits * (1.0 / temperature)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    V = logits.shape[-1]
    if k >= V:
        return logits.clone()
    # The k-th largest is the (V - k + 1)-th smallest.
    kth = torch.kthvalue(logits, V - k + 1, dim=-1, keepdim=True).values  # (..., 1)
    return torch.where(logits >= kth, logits, torch.full_like(logits, float("-inf")))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    if not (0 < p <= 1):
        raise ValueError(f"p must be in (0, 1], got {p}")
    if p == 1:
        return logits.clone()
    probs = torch.softmax(logits.float(), dim=-1)  # (..., V)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    before = sorted_probs.cumsum(-1) - sorted_probs  # (..., V): mass strictly before each token
    n_keep = (before < p).sum(-1, keepdim=True)  # the token crossing p still has before < p
    cutoff = sorted_probs.gather(-1, n_keep - 1)  # (..., 1): smallest kept probability
    return logits.masked_fill(probs < cutoff, float("-inf"))


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature == 0:
        return torch.max(logits, dim=-1).indices
    x = apply_temperature(logits, temperature)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None:
        x = top_p_filter(x, top_p)
    log_p = torch.log_softmax(x.float(), dim=-1)  # (..., V); -inf for dropped tokens
    # Gumbel-max: argmax(log p_i + G_i) with G = -log(E), E ~ Exp(1), is a draw from p.
    e = torch.empty_like(log_p).exponential_(generator=generator)
    return (log_p - e.log()).argmax(dim=-1)


def apply_repetition_penalty(logits, prev_ids, penalty):
    if penalty <= 0:
        raise ValueError(f"penalty must be positive, got {penalty}")
    present = torch.zeros_like(logits, dtype=torch.bool)
    present.scatter_(-1, prev_ids, True)  # in place on a tensor made here: allowed
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)
