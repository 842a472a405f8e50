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
    # BEGIN SOLUTION
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
    axis = axis % w.dim()
    qmax = 2 ** (bits - 1) - 1
    wf = w.to(torch.float32)
    others = [d for d in range(w.dim()) if d != axis]
    amax = wf.abs().amax(dim=others) if others else wf.abs()  # (C,)
    # An all-zero channel would give scale 0 and 0 / 0 = nan: any scale maps it to 0.
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # (C,)
    shape = [1] * w.dim()
    shape[axis] = -1  # broadcast the (C,) scales along `axis`
    q = torch.clamp(torch.round(wf / scale.view(shape)), -qmax, qmax).to(torch.int8)
    return q, scale
    # END SOLUTION


def dequantize_per_channel(q: Tensor, scale: Tensor, *, axis: int = 0) -> Tensor:
    """q * scale broadcast along `axis`: the float weights the int8 values stand for.

    Args:
        q: int8 of any shape (quantize_per_channel's q).
        scale: (q.shape[axis],) float32.
        axis: the channel dimension q was quantized along (negative counts from the end).

    Returns:
        float32 of q's shape, on q's device.
    """
    # BEGIN SOLUTION
    shape = [1] * q.dim()
    shape[axis % q.dim()] = -1
    return q.to(torch.float32) * scale.to(torch.float32).view(shape)
    # END SOLUTION


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
    # BEGIN SOLUTION
    y = x @ q.to(x.dtype).T  # (..., out): integer weights, exact in float
    y = y * scale.to(x.dtype)  # one scale per output column
    if bias is not None:
        y = y + bias
    return y
    # END SOLUTION


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
    # BEGIN SOLUTION
    if w.dim() != 2:
        raise ValueError(f"w must be (out, in), got shape {tuple(w.shape)}")
    n_out, n_in = w.shape
    if group_size < 1 or n_in % group_size or n_in % 2:
        raise ValueError(f"in = {n_in} must be even and divisible by group_size = {group_size}")
    groups = w.to(torch.float32).reshape(n_out, n_in // group_size, group_size)  # (out, G, group_size)
    amax = groups.abs().amax(dim=-1)  # (out, G)
    scales = torch.where(amax > 0, amax / 7, torch.ones_like(amax))
    q = torch.clamp(torch.round(groups / scales[..., None]), -7, 7).reshape(n_out, n_in)  # (out, in)
    nibbles = (q + 8).to(torch.uint8)  # 1..15: an offset, so no sign bit to worry about
    packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)  # (out, in // 2): even columns low
    return packed, scales
    # END SOLUTION


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
    # BEGIN SOLUTION
    n_out, half = packed.shape
    low = (packed & 0x0F).to(torch.int16) - 8  # columns 0, 2, 4, ...
    high = (packed >> 4).to(torch.int16) - 8  # columns 1, 3, 5, ...
    q = torch.stack([low, high], dim=-1).reshape(n_out, 2 * half)  # (out, in): interleaved back
    groups = q.to(torch.float32).reshape(n_out, -1, group_size)  # (out, G, group_size)
    return (groups * scales.to(torch.float32)[..., None]).reshape(n_out, 2 * half)
    # END SOLUTION
