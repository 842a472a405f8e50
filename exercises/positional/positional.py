"""Positional information: sinusoidal encodings and rotary position embeddings (RoPE).

Attention by itself is blind to order: permute the tokens and every output is permuted the
same way. You write the two ways modern models add order: the fixed sinusoidal table of
"Attention is all you need", added to the embeddings, and RoPE, which rotates queries and
keys so that q·k depends only on how far apart two tokens are. RoPE comes in two layouts:
the rotate-half one of LLaMA and GPT-NeoX, and the interleaved pairs of the RoFormer paper,
written as complex multiplication. The grader compares your code with a float64 formula,
checks that the rotation keeps norms and makes scores depend only on relative positions,
that a decoding step at position p matches row p of the whole sequence, that bfloat16
works at position 8192, and that the two layouts are one permutation apart.

Run the grader:   make check topic=positional
Hints:            exercises/positional/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor


def sinusoidal_positions(
    n_positions: int, dim: int, *, base: float = 10000.0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The sinusoidal position table of "Attention is all you need".

    PE[p, 2i]     = sin(p / base^(2i / dim))
    PE[p, 2i + 1] = cos(p / base^(2i / dim))
    for p in 0 .. n_positions - 1 and i in 0 .. dim/2 - 1: sines in the even columns,
    cosines in the odd ones, both of frequency base^(-2i/dim).

    Args:
        n_positions: P, the number of positions (rows), >= 1.
        dim: D, the embedding size (columns); must be even.
        base: the base of the geometric progression of wavelengths.
        device: where the table is made (None: torch's default device).
        dtype: the dtype of the table.

    Returns:
        (P, D) in `dtype` on `device`. The angles p / base^(2i/dim) are computed in
        float32 (float64 when dtype is float64), never in a half-precision dtype: bfloat16
        holds integers exactly only up to 256, so p = 8000 would become a multiple of 32.
        Only the finished table is converted to `dtype`.

    Raises:
        ValueError: if dim is odd.

    Rules: inputs unmodified; no Python loop over positions or columns (the grader counts
    aten ops at two table sizes).
    """
    raise NotImplementedError("positional.sinusoidal_positions")


def rope_cos_sin(positions: Tensor, head_dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of RoPE's angles, in the rotate-half layout, for the given positions.

    Pair j of the rotate-half layout is (x[j], x[j + head_dim/2]); it turns by the angle
    p * base^(-2j/head_dim) at position p. So column c of cos and sin has frequency
    base^(-2(c mod head_dim/2)/head_dim): the head_dim/2 frequencies, then the same ones again.

    Args:
        positions: integer positions (int64), (T,) or (B, T); any values >= 0, in any order
            (a decoding step passes the positions of its new tokens, T0 .. T0 + t - 1).
        head_dim: D, the size of each head; must be even.
        base: the RoPE base (10000 in LLaMA 1 and 2, 500000 in LLaMA 3).
        dtype: the dtype of the returned tensors.

    Returns:
        (cos, sin), each (*positions.shape, D), i.e. (T, D) or (B, T, D), in `dtype` on
        positions' device. The angles are computed in float32 from the integer positions
        (positions converted to float32, frequencies in float32), never in a
        half-precision dtype, and only cos and sin are converted to `dtype`.

    Raises:
        ValueError: if head_dim is odd.

    Rules: inputs unmodified.
    """
    raise NotImplementedError("positional.rope_cos_sin")


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x by RoPE, rotate-half layout: x * cos + rotate_half(x) * sin.

    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]), so feature j and feature j + D/2
    form one pair, turned by the angle of column j of cos and sin.

    Args:
        x: (B, H, T, D) queries or keys, D even; may be non-contiguous.
        cos: (T, D) or (B, T, D), from rope_cos_sin for the T positions of x; the same for
            every head (a (B, T, D) table is broadcast over H, never over B).
        sin: the same shape as cos.

    Returns:
        (B, H, T, D) in x's dtype on x's device; computed in the promoted dtype of x and
        cos (a bfloat16 x with float32 cos and sin is computed in float32, then converted
        back to bfloat16). Gradients flow to x.

    Rules: inputs unmodified (x is not rotated in place).
    """
    raise NotImplementedError("positional.apply_rope")


def apply_rope_interleaved(x: Tensor, positions: Tensor, *, base: float = 10000.0) -> Tensor:
    """RoPE in the original RoFormer layout, as complex multiplication.

    Features (x[2i], x[2i + 1]) form pair i, read as the complex number x[2i] + 1j * x[2i + 1],
    and are multiplied by exp(1j * p * base^(-2i/D)) at position p:
        out[2i]     = x[2i] * cos(a) - x[2i + 1] * sin(a)
        out[2i + 1] = x[2i] * sin(a) + x[2i + 1] * cos(a),   a = p * base^(-2i/D).

    Args:
        x: (B, H, T, D), D even; may be non-contiguous.
        positions: integer positions (int64) of x's T tokens, (T,) or (B, T) (a (B, T)
            tensor is broadcast over heads, never over the batch).
        base: the RoPE base.

    Returns:
        (B, H, T, D) in x's dtype on x's device. The angles are computed in float32 from
        the integer positions (never in half precision); bfloat16 and float16 x are
        rotated in float32 (complex64) and converted back. Gradients flow to x.

    Rules: inputs unmodified.
    """
    raise NotImplementedError("positional.apply_rope_interleaved")
