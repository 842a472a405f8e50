"""einsum: using it, then building it.

Einstein summation names every dimension of every tensor with a letter and says, in one
string, which letters the result keeps: `torch.einsum("bik,bkj->bij", a, b)` is a batched
matmul, `"ii->"` a trace, `"ij->ji"` a transpose. First you write four everyday
contractions as one `torch.einsum` call each: attention scores, a bilinear layer, a
batched trace and a multi-head projection. Then you build `einsum` itself, for one or two
operands, out of views (permute, reshape, diagonal), sums and one batched matrix multiply,
and the grader checks it against `torch.einsum` on many equations.

Run the grader:   make check topic=einsum
Hints:            exercises/einsum/README.md
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled dot-product attention scores, q @ k^T / sqrt(D), as one torch.einsum call.

    Args:
        q: (..., T_q, D) queries: any number of leading dims (B, H), the same as k's.
        k: (..., T_k, D) keys. T_k may differ from T_q.

    Returns:
        (..., T_q, T_k) in q's dtype and on q's device: entry [..., i, j] is
        sum_d q[..., i, d] * k[..., j, d] / sqrt(D).

    Rules: exactly one torch.einsum call does the multiplying and summing; outside it only
    elementwise ops (the scale) and views: no matmul, sum or other reduction, no Python
    loop. Inputs unmodified.
    """
    raise NotImplementedError("einsum.attention_scores")


def bilinear(x1: Tensor, x2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """torch.nn.functional.bilinear: y[..., o] = sum_ij x1[..., i] weight[o, i, j] x2[..., j] + bias[o].

    Args:
        x1: (N, *, in1): any leading dims (N, or N and more, or none), the same as x2's.
        x2: (N, *, in2).
        weight: (out, in1, in2).
        bias: None or (out,).

    Returns:
        (N, *, out) in x1's dtype and on x1's device.

    Rules: exactly one torch.einsum call (with three operands) does the multiplying and
    summing; adding the bias is the only other compute. No F.bilinear (or the aten
    bilinear / _trilinear kernels, whatever name reaches them). Inputs unmodified.
    """
    raise NotImplementedError("einsum.bilinear")


def batched_trace(x: Tensor) -> Tensor:
    """The trace of every matrix in a batch, as one torch.einsum call.

    Args:
        x: (..., N, N): any number of leading dims, including none.

    Returns:
        (...) in x's dtype and on x's device: sum_i x[..., i, i]; a 0-d tensor for a
        single (N, N) matrix.

    Rules: exactly one torch.einsum call; no torch.trace (it takes a single matrix), no
    diagonal-then-sum, no other reduction outside the einsum. Inputs unmodified.
    """
    raise NotImplementedError("einsum.batched_trace")


def multihead_project(x: Tensor, w: Tensor) -> Tensor:
    """Project x into every head at once: out[b, h, t, :] = x[b, t, :] @ w[h].

    Args:
        x: (B, T, Dm) activations.
        w: (H, Dm, Dh) one projection matrix per head (Dm model dim, Dh head dim).

    Returns:
        (B, H, T, Dh) in x's dtype and on x's device: heads before time, the layout
        attention wants.

    Rules: exactly one torch.einsum call (no loop over heads); outside it only views.
    Inputs unmodified.
    """
    raise NotImplementedError("einsum.multihead_project")


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """torch.einsum for one or two operands, built from views, sums and a batched matmul.

    The equation names each dim of each operand with a letter (a-z, A-Z; the subscripts
    of the operands separated by ','), then '->' and the output's letters:
    - a letter in the inputs but not in the output is summed over ('ij,jk->ik');
    - the output's letters give its dims in that order ('ij,jk->ki');
    - a letter repeated within one operand takes that operand's diagonal over those dims
      ('ii->i', 'ii->' a trace, 'iji->j');
    - with no '->' (implicit output), the output is the letters that appear exactly once
      in the whole equation, sorted (ASCII, so uppercase before lowercase): 'ij,jk' is
      'ij,jk->ik', 'ba' is 'ba->ab' (a transpose) and 'ii' is 'ii->' (a trace);
    - an operand may be 0-d, with an empty subscript (',ij->ij'); spaces are ignored.
    Not supported, and rejected with ValueError: '...' (ellipsis), more than two
    operands, and broadcasting (every letter must have the same size everywhere).

    Args:
        equation: the subscripts, as above.
        operands: one or two tensors of one floating dtype, on one device, with any
            strides (transposed views too); dims of size 0 allowed.

    Returns:
        A tensor of the output letters' sizes, in that order (0-d when the output has no
        letters), in the operands' dtype and on their device, with gradients flowing to
        every operand. It may be a view of an operand.

    Raises:
        ValueError: not one or two operands; a number of subscripts different from the
            number of operands; a character other than a letter, ',', '->' and spaces
            (so '...'), or more than one '->'; a subscript whose length differs from
            its operand's number of dims; a letter with different sizes in two places;
            an output letter repeated, or absent from every input.

    Rules: no torch.einsum or torch.tensordot (by any name, at the aten level). No
    Python loop over an index's values: the grader counts every aten op, views too, at
    two sizes of each index. A contraction (a letter summed over that both operands
    have) runs as one matrix multiply (torch.bmm or matmul): the grader counts its
    FLOPs, and a broadcast multiply followed by a sum, which materialises every
    product, does none. Inputs unmodified.
    """
    raise NotImplementedError("einsum.einsum")
