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
    # BEGIN SOLUTION
    if nonlinearity in LINEAR_FNS or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        # bool is a subclass of int: True is no slope.
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        # Var(leaky_relu(x)) = (1 + slope^2) / 2 * E[x^2] for symmetric x: the gain undoes it.
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity!r}")
    # END SOLUTION


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
    # BEGIN SOLUTION
    if tensor.dim() < 2:
        raise ValueError("fan in and fan out cannot be computed for a tensor with fewer than 2 dimensions")
    # Each output of a convolution sums in * kH * kW inputs; each input reaches out * kH * kW outputs.
    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field
    # END SOLUTION


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
    # BEGIN SOLUTION
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    # Var(U(-a, a)) = a^2 / 3 = gain^2 * 2 / (fan_in + fan_out): the compromise between
    # keeping the forward (fan_in) and the backward (fan_out) variance.
    a = math.sqrt(3.0) * gain * math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():  # in place on a leaf that requires grad
        return tensor.uniform_(-a, a, generator=generator)
    # END SOLUTION


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill tensor in place from N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)).

    Args, Returns and Rules: as xavier_uniform_.
    """
    # BEGIN SOLUTION
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
    # END SOLUTION


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
    # BEGIN SOLUTION
    if tensor.numel() == 0:
        return tensor  # nothing to fill, and a zero fan must not be divided by
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} is not supported: use 'fan_in' or 'fan_out'")
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3.0) * std  # Var(U(-b, b)) = b^2 / 3 = std^2
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
    # END SOLUTION


def kaiming_normal_(
    tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator: torch.Generator | None = None
) -> Tensor:
    """Fill tensor in place from N(0, std^2), std = gain / sqrt(fan).

    Args, Returns and Rules: as kaiming_uniform_.
    """
    # BEGIN SOLUTION
    if tensor.numel() == 0:
        return tensor
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} is not supported: use 'fan_in' or 'fan_out'")
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
    # END SOLUTION
