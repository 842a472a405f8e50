"""Weight quantization: symmetric per-channel int8, an int8 linear layer, grouped int4 packing.

A model's weights take a quarter of the memory in int8 and an eighth in int4. You write
symmetric per-channel quantization (one scale per output channel, as torch's
quantize_per_channel with qint8), its inverse, a linear layer that multiplies by the int8
weight and applies the scales to its output columns (never rebuilding a float weight),
and the grouped int4 format of GPTQ/AWQ-style checkpoints: one scale per group of input
columns and two 4-bit values packed into each byte.

The grader compares your int8 values with torch's own quantization, checks the error
bound |w - dequantized| <= scale / 2 everywhere, the exact packed byte layout, lossless
round trips of values already on the grid, the int8 layer against the float one, and
that no dequantized weight is ever materialised inside int8_linear.

Run the grader:   make check topic=quantization
Hints:            exercises/quantization/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor


def quantize_per_channel(w: Tensor, *, bits: int = 8, axis: int = 0) -> tuple[Tensor, Tensor]:
    """Symmetric per-channel quantization of w along `axis`.

    With qmax = 2^(bits-1) - 1 (127 for 8 bits):
        scale[c] = max |w| over channel c (every element whose index along `axis` is c) / qmax,
                   and 1.0 for a channel that is all zeros;
        q        = clamp(round(w / scale), -qmax, qmax), broadcast along `axis`.
    w is converted to float32 first; w / scale is a float32 division and round is
    torch.round: round half to even (2.5 -> 2, -1.5 -> -2). (Where w / scale lies within
    float32 rounding of a half-way point, either neighbour is accepted: w * (1 / scale),
    which torch computes, rounds some of those the other way.)
    For bits = 8 this equals torch.quantize_per_channel(w, scale, zeros, axis,
    torch.qint8).int_repr().

    Args:
        w: (d0, d1, ...) floating weights, at least 1-d (float32, float16, bfloat16 or float64).
        bits: 2 to 8, the signed width; anything else raises ValueError.
        axis: the channel dimension (negative counts from the end).

    Returns:
        (q, scale): q int8 of w's shape, every value in [-qmax, qmax]; scale float32 of
        shape (w.shape[axis],); both on w's device.

    Rules: w is not modified; no Python loop over channels (the grader counts aten ops).
    """
    raise NotImplementedError("quantization.quantize_per_channel")


def dequantize_per_channel(q: Tensor, scale: Tensor, *, axis: int = 0) -> Tensor:
    """q * scale broadcast along `axis`: the float weights the int8 values stand for.

    Args:
        q: int8 of any shape (quantize_per_channel's q).
        scale: (q.shape[axis],) float32.
        axis: the channel dimension q was quantized along (negative counts from the end).

    Returns:
        float32 of q's shape, on q's device.
    """
    raise NotImplementedError("quantization.dequantize_per_channel")


def int8_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ (q * scale[:, None]).T + bias for a weight quantized along axis 0, computed as
    (x @ q.T) * scale + bias.

    The scale of output channel o multiplies column o of x @ q.T, after the matmul: the
    (out, in) weight is never dequantized into floats. (On hardware the matmul of int8
    values runs in integer units with int32 accumulators, and the per-channel scales are
    applied to the output; here q is cast to x's dtype for the matmul, which is exact for
    integers up to 127, but never multiplied by its scales.)

    Args:
        x: (..., in) float32 (or float64) activations.
        q: (out, in) int8, quantized along axis 0 (one scale per output channel).
        scale: (out,) float32.
        bias: None or (out,), x's dtype.

    Returns:
        (..., out) in x's dtype, on x's device.

    Rules: no tensor of the weight's size (out * in elements) may be computed from scale:
    the grader follows every value derived from scale through the aten ops your code runs.
    No input is modified.
    """
    raise NotImplementedError("quantization.int8_linear")


def quantize_int4_grouped(w: Tensor, *, group_size: int = 32) -> tuple[Tensor, Tensor]:
    """Symmetric int4 quantization with one scale per group of `group_size` input columns,
    two values packed into each byte.

    For row o and group g (columns g * group_size to (g + 1) * group_size - 1):
        scales[o, g] = max |w[o, group]| / 7, and 1.0 for a group that is all zeros;
        q[o, i]      = clamp(round(w[o, i] / scales[o, i // group_size]), -7, 7)
    (w converted to float32 first; a float32 division; round half to even). Each q is
    stored as the unsigned nibble q + 8 (1 to 15): byte j of a row holds column 2j in its
    low 4 bits and column 2j + 1 in its high 4 bits,
        packed[o, j] = (q[o, 2j] + 8) | ((q[o, 2j + 1] + 8) << 4).

    Args:
        w: (out, in) floating weights; in must be even and divisible by group_size.
        group_size: columns per scale, >= 1.

    Returns:
        (packed, scales): packed uint8 (out, in // 2); scales float32 (out, in // group_size);
        both on w's device.

    Raises:
        ValueError: if w is not 2-d, or in is odd or not divisible by group_size.

    Rules: w is not modified; no Python loop over rows, groups or columns.
    """
    raise NotImplementedError("quantization.quantize_int4_grouped")


def dequantize_int4_grouped(packed: Tensor, scales: Tensor, *, group_size: int = 32) -> Tensor:
    """The float weights (out, in) a quantize_int4_grouped result stands for: each nibble
    minus 8, times its group's scale.

    Args:
        packed: uint8 (out, in // 2), the layout quantize_int4_grouped returns.
        scales: float32 (out, in // group_size).
        group_size: columns per scale.

    Returns:
        float32 (out, in), on packed's device.
    """
    raise NotImplementedError("quantization.dequantize_int4_grouped")
