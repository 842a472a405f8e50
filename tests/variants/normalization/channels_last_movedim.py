"""Variant: batch_norm moves the channels last (movedim) and normalises rows of C like a
column-wise layer norm, then moves them back; torch.var / torch.mean calls with explicit
correction; running statistics blended with torch.lerp and written back with copy_.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf = x.to(compute)
    y = xf / torch.sqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = weight * y
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_parameter("weight", nn.Parameter(torch.ones(dim)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, eps=self.eps)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf = x.to(compute)
    mean = torch.mean(xf, dim=-1, keepdim=True)
    var = torch.var(xf, dim=-1, keepdim=True, correction=0)
    y = (xf - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = torch.addcmul(bias if bias is not None else torch.zeros_like(y), y, weight)
    elif bias is not None:
        y = y + bias
    return y.to(x.dtype)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, *, training, momentum=0.1, eps=1e-5):
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xc = x.to(compute).movedim(1, -1)  # (N, C) or (N, L, C): channels last
    rows = xc.reshape(-1, xc.shape[-1])  # (N * L, C)
    if training:
        mean = rows.mean(dim=0)
        var = rows.var(dim=0, correction=0)
        unbiased = rows.var(dim=0, correction=1)
        with torch.no_grad():
            running_mean.copy_(torch.lerp(running_mean, mean, momentum))
            running_var.copy_(torch.lerp(running_var, unbiased, momentum))
    else:
        mean, var = running_mean, running_var
    y = (xc - mean) / torch.sqrt(var + eps)  # (C,) broadcasts over the channels-last layout
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.movedim(-1, 1).to(x.dtype)
