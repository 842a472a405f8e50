"""Variant: the four einsum functions written differently (q scaled before the einsum,
bilinear and batched_trace on flattened leading dims, the operands of multihead_project
swapped); einsum parses with its own bookkeeping (letter -> dims), takes diagonals with
torch.diagonal over positions looked up afresh, and contracts with torch.matmul over the
batch letters kept as separate dims (only the kept and summed letters are flattened).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    return torch.einsum("...td,...sd->...ts", q / math.sqrt(q.shape[-1]), k)


def bilinear(x1: Tensor, x2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    lead = x1.shape[:-1]
    a = x1.reshape(-1, x1.shape[-1])  # (N', in1)
    b = x2.reshape(-1, x2.shape[-1])  # (N', in2)
    y = torch.einsum("ni,oij,nj->no", a, weight, b).reshape(*lead, weight.shape[0])
    return y if bias is None else torch.add(y, bias)


def batched_trace(x: Tensor) -> Tensor:
    n = x.shape[-1]
    return torch.einsum("bii->b", x.reshape(-1, n, n)).reshape(x.shape[:-2])


def multihead_project(x: Tensor, w: Tensor) -> Tensor:
    return torch.einsum("hmd,btm->bhtd", w, x)


def _letters(spec: str) -> bool:
    return all("a" <= c <= "z" or "A" <= c <= "Z" for c in spec)


def einsum(equation: str, *operands: Tensor) -> Tensor:
    eq = "".join(equation.split())
    if not 1 <= len(operands) <= 2:
        raise ValueError("one or two operands")
    if eq.count("->") > 1:
        raise ValueError("at most one '->'")
    if "->" in eq:
        lhs, out = eq.split("->")
    else:
        lhs, out = eq, None
    subs = lhs.split(",")
    if len(subs) != len(operands) or not all(_letters(s) for s in subs) or (out is not None and not _letters(out)):
        raise ValueError(f"bad equation {equation!r}")
    size: dict[str, int] = {}
    for s, t in zip(subs, operands):
        if len(s) != t.ndim:
            raise ValueError(f"{s!r} does not fit a {t.ndim}-d operand")
        for c, n in zip(s, t.shape):
            if size.get(c, n) != n:
                raise ValueError(f"letter {c}: sizes {size[c]} and {n}")
            size[c] = n
    every = "".join(subs)
    if out is None:
        out = "".join(sorted(c for c in set(every) if every.count(c) == 1))
    if len(set(out)) < len(out) or any(c not in size for c in out):
        raise ValueError(f"bad output {out!r}")

    def diagonals(t: Tensor, s: str) -> tuple[Tensor, str]:
        labels = list(s)
        for c in dict.fromkeys(s):
            while labels.count(c) > 1:
                i = labels.index(c)
                j = labels.index(c, i + 1)
                t = torch.diagonal(t, 0, i, j)
                del labels[j], labels[i]
                labels.append(c)
        return t, "".join(labels)

    def sum_except(t: Tensor, s: str, keep: str) -> tuple[Tensor, str]:
        drop = tuple(i for i, c in enumerate(s) if c not in keep)
        if not drop:
            return t, s
        return torch.sum(t, drop), "".join(c for c in s if c in keep)

    if len(operands) == 1:
        t, s = diagonals(operands[0], subs[0])
        t, s = sum_except(t, s, out)
        return t.permute([s.index(c) for c in out])

    (a, b), (sa, sb) = operands, subs
    a, sa = diagonals(a, sa)
    b, sb = diagonals(b, sb)
    a, sa = sum_except(a, sa, sb + out)
    b, sb = sum_except(b, sb, sa + out)
    batch = "".join(c for c in sa if c in sb and c in out)
    summed = "".join(c for c in sa if c in sb and c not in out)
    left = "".join(c for c in sa if c not in sb)
    right = "".join(c for c in sb if c not in sa)
    bsz = [size[c] for c in batch]
    nl, ns, nr = (math.prod(size[c] for c in g) for g in (left, summed, right))
    am = a.permute([sa.index(c) for c in batch + left + summed]).reshape([*bsz, nl, ns])
    bm = b.permute([sb.index(c) for c in batch + summed + right]).reshape([*bsz, ns, nr])
    y = torch.matmul(am, bm).reshape([*bsz, *[size[c] for c in left + right]])  # (batch..., left..., right...)
    have = batch + left + right
    return y.permute([have.index(c) for c in out])
