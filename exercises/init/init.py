"""Weight initialisation from scratch: gains, fans, Xavier and Kaiming.

You rebuild torch.nn.init's calculate_gain, the fan-in and fan-out of a weight (a
convolution's counts its receptive field), and the four initialisers xavier_uniform_,
xavier_normal_, kaiming_uniform_ and kaiming_normal_, with torch's arguments and a
`generator=`. The grader compares the gains and fans with torch's exactly and checks the
values you draw statistically (exact bounds, the distribution's shape and variance, with a
false-failure rate below 1e-6), in place, on Parameters, in float64 and bfloat16, and with
and without a generator. torch.nn.init itself is forbidden.

Run the grader:   make check topic=init
Hints:            exercises/init/README.md
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Every name calculate_gain accepts whose gain is 1: layers with no nonlinearity of their own.
LINEAR_FNS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity, as torch.nn.init.calculate_gain.

    Args:
        nonlinearity: one of "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
            "conv_transpose2d", "conv_transpose3d", "sigmoid" (gain 1), "tanh" (5/3),
            "relu" (sqrt(2)), "leaky_relu" (sqrt(2 / (1 + negative_slope^2))), "selu" (3/4).
            Names are exact (lower case); any other name raises ValueError.
        param: leaky_relu's negative slope: None means 0.01; otherwise an int or a float
            (a bool, or anything else, raises ValueError). Ignored for the other names.

    Returns:
        The gain, a Python number (int 1 or a float).
    """
    raise NotImplementedError("init.calculate_gain")


def fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """fan_in and fan_out of a weight, as torch.nn.init's _calculate_fan_in_and_fan_out.

    Args:
        tensor: a weight of shape (out, in) (a Linear's) or (out, in, *kernel) (a
            convolution's: (C_out, C_in / groups, kH, kW) for Conv2d), any dtype and device.

    Returns:
        (fan_in, fan_out) as Python ints: fan_in = in * prod(kernel), fan_out = out *
        prod(kernel) (the receptive field counts in both; prod of no dims is 1).

    Raises:
        ValueError: for a tensor with fewer than 2 dimensions.
    """
    raise NotImplementedError("init.fan_in_and_fan_out")


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill tensor in place from U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio).

    Args:
        tensor: (out, in, *kernel), at least 2-d, a floating dtype (float32, float64,
            bfloat16, float16), any device; may be an nn.Parameter that requires grad.
        gain: the scale factor (calculate_gain of the nonlinearity that follows).
        generator: the torch.Generator to draw from; None draws from torch's global
            generator (so torch.manual_seed makes it reproducible).

    Returns:
        tensor itself (the same object, its storage filled in place, still requiring grad
        if it did), every entry drawn independently. The same generator state gives the
        same values.

    Rules: nothing from torch.nn.init; the draw is not recorded by autograd.
    """
    raise NotImplementedError("init.xavier_uniform_")


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill tensor in place from N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)).

    Args, Returns and Rules: as xavier_uniform_.
    """
    raise NotImplementedError("init.xavier_normal_")


def kaiming_uniform_(
    tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator: torch.Generator | None = None
) -> Tensor:
    """Fill tensor in place from U(-bound, bound), bound = sqrt(3) * gain / sqrt(fan) (He et al.).

    Args:
        tensor: as xavier_uniform_.
        a: the negative slope of the leaky ReLU that follows (the `param` of
            calculate_gain; only used with nonlinearity="leaky_relu").
        mode: "fan_in" (keeps the forward pass's variance) or "fan_out" (the backward
            pass's): which fan divides. Anything else raises ValueError (for a tensor
            with elements).
        nonlinearity: a name calculate_gain accepts; gain = calculate_gain(nonlinearity, a).
        generator: as xavier_uniform_.

    Returns:
        tensor itself, filled in place, as xavier_uniform_. A tensor with no elements is
        returned unchanged, with no error (its fan may be 0).

    Rules: as xavier_uniform_.
    """
    raise NotImplementedError("init.kaiming_uniform_")


def kaiming_normal_(
    tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator: torch.Generator | None = None
) -> Tensor:
    """Fill tensor in place from N(0, std^2), std = gain / sqrt(fan).

    Args, Returns and Rules: as kaiming_uniform_.
    """
    raise NotImplementedError("init.kaiming_normal_")
