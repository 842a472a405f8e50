"""Variant: the order torch's own composite ops use: normalise in float32, convert to x's
dtype, and only then apply weight and bias (in x's dtype); running statistics updated with
torch.addcmul-free arithmetic on new tensors copied back with copy_.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).type_as(x)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).square().mean(-1, keepdim=True)
    y = ((xf - mean) / (var + eps).sqrt()).type_as(x)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def batch_norm(x, running_mean, running_var, weight=None, bias=None, *, training, momentum=0.1, eps=1e-5):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    dims = (0,) + tuple(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    if training:
        mean = xf.mean(dims)
        var = (xf - mean.reshape(view)).square().mean(dims)
        n = xf.numel() / xf.shape[1]
        with torch.no_grad():
            running_mean.copy_((1 - momentum) * running_mean + momentum * mean)
            running_var.copy_((1 - momentum) * running_var + momentum * var * (n / (n - 1)))
    else:
        mean, var = running_mean, running_var
    y = ((xf - mean.reshape(view)) / (var.reshape(view) + eps).sqrt()).type_as(x)
    if weight is not None:
        y = y * weight.reshape(view).to(y.dtype)
    if bias is not None:
        y = y + bias.reshape(view).to(y.dtype)
    return y
