"""Variant: rms_norm through torch.linalg.vector_norm, layer_norm and batch_norm through
torch.var_mean, batch statistics from a (C, N * L) matrix, running statistics updated by mul_/add_.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    xf = _upcast(x)
    d = x.shape[-1]
    # rms = ||x|| / sqrt(D), so x / sqrt(rms^2 + eps) = x * sqrt(D) / sqrt(||x||^2 + D * eps).
    norm_sq = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square()
    y = xf * (math.sqrt(d) / torch.sqrt(norm_sq + d * eps))
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        nn.init.ones_(self.weight)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, weight=self.weight, eps=self.eps)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    xf = _upcast(x)
    var, mean = torch.var_mean(xf, dim=-1, keepdim=True, correction=0)  # two-pass, stable
    y = (xf - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, *, training, momentum=0.1, eps=1e-5):
    xf = _upcast(x)
    c = x.shape[1]
    per_channel = xf.transpose(0, 1).reshape(c, -1)  # (C, N * L): one row per channel
    if training:
        var, mean = torch.var_mean(per_channel, dim=1, correction=0)  # (C,)
        n = per_channel.shape[1]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
    else:
        mean, var = running_mean, running_var
    expand = (c,) + (1,) * (x.dim() - 2)  # (C,) or (C, 1): broadcast against (N, C[, L])
    # Centre before scaling: x * a - mean * a would cancel when the mean is large.
    y = (xf - mean.reshape(expand)) * torch.rsqrt(var + eps).reshape(expand)
    if weight is not None:
        y = y * weight.reshape(expand)
    if bias is not None:
        y = y + bias.reshape(expand)
    return y.to(x.dtype)
