"""Variant: a learner's file written another way. softmax is exp(log_softmax) (one stable
formula for both), the max comes from torch.max(...).values and is not detached, half
precision is upcast with .float(), silu's sigmoid is 0.5 * (1 + tanh(x / 2)), relu is a
where against a zeros tensor, and softplus's branches are joined by masks (no torch.where):
the clamped exp keeps the discarded branch finite."""

from __future__ import annotations

import math

import torch
from torch import Tensor

HALF = (torch.float16, torch.bfloat16)


def _up(x: Tensor) -> Tensor:
    return x.float() if x.dtype in HALF else x


def relu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    xf = _up(x)
    if approximate == "none":
        y = xf * 0.5 * torch.erfc(-xf / math.sqrt(2.0))  # 1 + erf(z) = erfc(-z)
    elif approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        y = 0.5 * xf * (1.0 + torch.tanh(c * xf + c * 0.044715 * xf.pow(3)))
    else:
        raise ValueError(f"unknown approximate {approximate!r}")
    return y.to(x.dtype)


def silu(x: Tensor) -> Tensor:
    xf = _up(x)
    return (xf * (0.5 * (1.0 + torch.tanh(0.5 * xf)))).to(x.dtype)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    xf = _up(x)
    bx = beta * xf
    linear = bx > threshold
    smooth = torch.log1p(torch.exp(bx.clamp(max=threshold))) / beta
    # Each branch zeroed where the other is used: no inf from the unused one enters the sum.
    out = smooth.masked_fill(linear, 0.0) + xf.masked_fill(~linear, 0.0)
    return out.to(x.dtype)


def log_softmax(x: Tensor, dim: int, *, dtype: torch.dtype | None = None) -> Tensor:
    if dtype is not None:
        x = x.to(dtype)
    xf = _up(x)
    m = torch.max(xf, dim=dim, keepdim=True).values
    z = xf - m
    return (z - z.exp().sum(dim, keepdim=True).log()).to(x.dtype)


def softmax(x: Tensor, dim: int, *, dtype: torch.dtype | None = None) -> Tensor:
    if dtype is not None:
        x = x.to(dtype)
    return log_softmax(_up(x), dim).exp().to(x.dtype)
