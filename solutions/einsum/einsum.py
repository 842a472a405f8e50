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
    # BEGIN SOLUTION
    # "..." stands for every leading dim, so one equation fits (T, D), (B, T, D) and
    # (B, H, T, D). d appears in both inputs and not in the output: it is summed.
    scores = torch.einsum("...qd,...kd->...qk", q, k)  # (..., T_q, T_k)
    return scores * (1.0 / math.sqrt(q.shape[-1]))
    # END SOLUTION


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
    # BEGIN SOLUTION
    # Three operands in one call: torch contracts them pairwise, in an order it picks.
    y = torch.einsum("...i,oij,...j->...o", x1, weight, x2)  # (N, *, out)
    if bias is not None:
        y = y + bias  # (out,) broadcasts over the leading dims
    return y
    # END SOLUTION


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
    # BEGIN SOLUTION
    # A letter repeated within one operand walks its diagonal; absent from the output, it
    # is summed.
    return torch.einsum("...ii->...", x)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # The output order is the equation's: "bhtd" puts the heads before time, with no
    # transpose afterwards.
    return torch.einsum("btm,hmd->bhtd", x, w)  # (B, H, T, Dh)
    # END SOLUTION


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
    # BEGIN SOLUTION
    def parse(equation: str, operands: tuple[Tensor, ...]) -> tuple[list[str], str, dict[str, int]]:
        """(the operands' subscripts, the output's, each letter's size), or ValueError."""
        if len(operands) not in (1, 2):
            raise ValueError(f"einsum takes one or two operands, got {len(operands)}")
        eq = equation.replace(" ", "")
        lhs, arrow, output = eq.partition("->")
        inputs = lhs.split(",")
        if len(inputs) != len(operands):
            raise ValueError(f"'{equation}' has {len(inputs)} subscripts for {len(operands)} operands")
        for sub in [*inputs, output]:
            # isascii as well: str.isalpha accepts letters of every alphabet. This also
            # rejects '...', a second '->' and a stray '-' or '>'.
            if not all(c.isascii() and c.isalpha() for c in sub):
                raise ValueError(f"'{equation}': subscripts are letters only (no '...', one '->')")
        sizes: dict[str, int] = {}
        for sub, x in zip(inputs, operands):
            if len(sub) != x.dim():
                raise ValueError(f"'{equation}': subscript '{sub}' names {len(sub)} dims of a {x.dim()}-d operand")
            for c, n in zip(sub, x.shape):
                if sizes.setdefault(c, n) != n:
                    raise ValueError(f"'{equation}': letter {c} has sizes {sizes[c]} and {n} (no broadcasting)")
        if not arrow:
            # Implicit output: the letters seen exactly once in the whole equation, sorted. A
            # letter repeated within one operand ('ii') is summed too.
            counts = Counter("".join(inputs))
            output = "".join(sorted(c for c, n in counts.items() if n == 1))
        if len(set(output)) != len(output):
            raise ValueError(f"'{equation}': a letter appears twice in the output")
        if not set(output) <= set(sizes):
            raise ValueError(f"'{equation}': output letter(s) {sorted(set(output) - set(sizes))} appear in no input")
        return inputs, output, sizes

    def prepare(x: Tensor, sub: str, keep: set[str]) -> tuple[Tensor, str]:
        """x with each repeated letter replaced by its diagonal and each letter not in `keep`
        summed out, and its new subscript (every letter once)."""
        while len(set(sub)) != len(sub):
            first = next(i for i, c in enumerate(sub) if sub.count(c) > 1)
            second = sub.index(sub[first], first + 1)
            # diagonal removes both dims and appends the diagonal as the LAST dim (a view).
            x = x.diagonal(dim1=first, dim2=second)
            sub = sub[:first] + sub[first + 1 : second] + sub[second + 1 :] + sub[first]
        dims = [i for i, c in enumerate(sub) if c not in keep]
        # Only when there is something to sum: x.sum(dim=[]) sums over every dim.
        if dims:
            x = x.sum(dim=dims)
            sub = "".join(c for c in sub if c in keep)
        return x, sub

    def order(sub: str, letters) -> list[int]:
        """The permutation that puts the dims of a tensor labelled `sub` in the order `letters`."""
        return [sub.index(c) for c in letters]

    inputs, output, sizes = parse(equation, operands)
    if len(operands) == 1:
        x, sub = prepare(operands[0], inputs[0], keep=set(output))
        return x.permute(order(sub, output))

    (sa, sb), (a, b) = inputs, operands
    # Letters only one operand has and the output drops are summed there first: carried
    # into the matmul they would multiply its size for nothing.
    a, sa = prepare(a, sa, keep=set(sb) | set(output))
    b, sb = prepare(b, sb, keep=set(sa) | set(output))
    # Every letter left now has one of four roles, from where it appears:
    batch = [c for c in output if c in sa and c in sb]  # both inputs and the output
    left = [c for c in output if c in sa and c not in sb]  # a and the output
    right = [c for c in output if c in sb and c not in sa]  # b and the output
    summed = [c for c in sa if c in sb and c not in output]  # both inputs: contracted

    def size(letters: list[str]) -> int:
        return math.prod(sizes[c] for c in letters)

    # Group each role's dims into one: a as (batch, left, summed), b as (batch, summed,
    # right); then a single bmm does every multiply-add. The summed letters come in the
    # same order on both sides, or the flattened dims would pair the wrong elements.
    # Explicit sizes, not -1: with another size 0, reshape cannot tell what -1 stands for.
    a3 = a.permute(order(sa, batch + left + summed)).reshape(size(batch), size(left), size(summed))
    b3 = b.permute(order(sb, batch + summed + right)).reshape(size(batch), size(summed), size(right))
    y = torch.bmm(a3, b3)  # (batch, left, right), each flattened
    kept = batch + left + right
    y = y.reshape([sizes[c] for c in kept])  # one dim per letter again
    return y.permute(order("".join(kept), output))
    # END SOLUTION
