"""Variant: cross_entropy with every kind of target turned into a dense per-class
distribution (one_hot, smoothing and class weights folded in) and a hand-written
max-shifted logsumexp; BCE and the focal loss through F.logsigmoid; kl_div through
torch.where; huber_loss through a clamp (0.5 m^2 + delta (|d| - m), m = min(|d|, delta)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _wide(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"invalid reduction {reduction!r}")


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"invalid reduction {reduction!r}")
    x = _wide(input)
    dim = 0 if x.dim() == 1 else 1
    c = x.shape[dim]
    m = x.amax(dim=dim, keepdim=True).detach()
    log_p = x - m - (x - m).exp().sum(dim=dim, keepdim=True).log()
    w = torch.ones(c, dtype=x.dtype, device=x.device) if weight is None else weight.to(x.dtype)
    w_b = w.view([c if i == dim else 1 for i in range(x.dim())])
    if target.is_floating_point():
        q = target.to(x.dtype) * (1 - label_smoothing) + label_smoothing / c
        loss = -(q * w_b * log_p).sum(dim=dim)
        return (loss.sum() / (x.numel() // c) if reduction == "mean" else _reduce(loss, reduction)).to(input.dtype)
    keep = target != ignore_index
    idx = torch.where(keep, target, torch.zeros_like(target))
    q = F.one_hot(idx, c).movedim(-1, dim).to(x.dtype) * (1 - label_smoothing) + label_smoothing / c
    loss = torch.where(keep, -(q * w_b * log_p).sum(dim=dim), torch.zeros((), dtype=x.dtype, device=x.device))
    if reduction == "mean":
        return (loss.sum() / torch.where(keep, w[idx], 0.0).sum()).to(input.dtype)
    return _reduce(loss, reduction).to(input.dtype)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"invalid reduction {reduction!r}")
    x = _wide(input)
    t = target.to(x.dtype)
    pw = 1.0 if pos_weight is None else pos_weight.to(x.dtype)
    loss = -(pw * t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    if weight is not None:
        loss = weight.to(x.dtype) * loss
    return _reduce(loss, reduction).to(input.dtype)


def kl_div(input, target, reduction="mean", log_target=False):
    if reduction not in ("none", "batchmean", "sum", "mean"):
        raise ValueError(f"invalid reduction {reduction!r}")
    x = _wide(input)
    t = target.to(x.dtype)
    if log_target:
        loss = t.exp() * (t - x)
    else:
        loss = torch.where(t > 0, t * (t.log() - x), torch.zeros((), dtype=x.dtype, device=x.device))
    if reduction == "batchmean":
        return (loss.sum() / (x.shape[0] if x.dim() else 1)).to(input.dtype)
    return _reduce(loss, reduction).to(input.dtype)


def huber_loss(input, target, reduction="mean", delta=1.0):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"invalid reduction {reduction!r}")
    abs_d = (_wide(input) - _wide(target)).abs()
    m = abs_d.clamp(max=delta)
    return _reduce(0.5 * m.square() + delta * (abs_d - m), reduction).to(input.dtype)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"invalid reduction {reduction!r}")
    x = _wide(inputs)
    t = targets.to(x.dtype)
    ce = -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    p = x.sigmoid()
    one_minus_p_t = 1 - (p * t + (1 - p) * (1 - t))
    loss = ce * one_minus_p_t.pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return _reduce(loss, reduction).to(inputs.dtype)
