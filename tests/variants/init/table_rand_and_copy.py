"""Variant: calculate_gain from a lookup table; the fans from math.prod over the shape;
every initialiser draws a fresh tensor with torch.rand / torch.randn (in float32 for half
dtypes) from the generator, scales it, and copies it into the given tensor under no_grad."""

from __future__ import annotations

import math

import torch
from torch import Tensor

GAINS = {name: 1.0 for name in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid")}
GAINS.update(tanh=5.0 / 3, relu=math.sqrt(2.0), selu=0.75)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    if nonlinearity == "leaky_relu":
        if param is None:
            param = 0.01
        elif type(param) not in (int, float):
            raise ValueError(f"bad slope {param!r}")
        return math.sqrt(2.0 / (1.0 + param * param))
    if nonlinearity not in GAINS:
        raise ValueError(f"no gain for {nonlinearity!r}")
    return GAINS[nonlinearity]


def fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise ValueError("need at least 2 dims")
    out_maps, in_maps, *kernel = shape
    rf = math.prod(kernel)
    return int(in_maps * rf), int(out_maps * rf)


def _draw(tensor: Tensor, kind: str, scale: float, generator) -> Tensor:
    dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    if kind == "uniform":
        fresh = (torch.rand(tensor.shape, generator=generator, dtype=dtype, device=tensor.device) * 2 - 1) * scale
    else:
        fresh = torch.randn(tensor.shape, generator=generator, dtype=dtype, device=tensor.device) * scale
    with torch.no_grad():
        tensor.copy_(fresh)
    return tensor


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    fi, fo = fan_in_and_fan_out(tensor)
    return _draw(tensor, "uniform", gain * math.sqrt(6.0 / (fi + fo)), generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    fi, fo = fan_in_and_fan_out(tensor)
    return _draw(tensor, "normal", gain * math.sqrt(2.0 / (fi + fo)), generator)


def _kaiming_std(tensor, a, mode, nonlinearity):
    fi, fo = fan_in_and_fan_out(tensor)
    fans = {"fan_in": fi, "fan_out": fo}
    if mode not in fans:
        raise ValueError(f"unknown mode {mode!r}")
    return calculate_gain(nonlinearity, a) / math.sqrt(fans[mode])


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None) -> Tensor:
    if 0 in tensor.shape:
        return tensor
    return _draw(tensor, "uniform", math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity), generator)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None) -> Tensor:
    if 0 in tensor.shape:
        return tensor
    return _draw(tensor, "normal", _kaiming_std(tensor, a, mode, nonlinearity), generator)
