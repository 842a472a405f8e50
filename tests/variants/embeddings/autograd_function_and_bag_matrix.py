"""Variant: embedding as a custom autograd Function (a gather forward, a scatter-add
backward that skips the padding row), the module initialised with nn.init.normal_, and
embedding_bag through a (B, N) bag-membership matrix: a matmul for sum and mean, a masked
(B, N, D) maximum for max. Its work grows with the ids and the bags, never with V.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, flat: Tensor, padding_idx: int) -> Tensor:
        ctx.save_for_backward(flat)
        ctx.num_rows = weight.shape[0]
        ctx.padding_idx = padding_idx
        return weight[flat]  # (N, D)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (flat,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.num_rows, grad.shape[1])
        out.index_put_((flat,), grad, accumulate=True)  # repeated ids add up
        if ctx.padding_idx >= 0:
            out[ctx.padding_idx] = 0
        return out, None, None


def embedding(ids: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    pad = -1 if padding_idx is None else padding_idx % weight.shape[0]
    flat = ids.reshape(-1).long()
    return _Lookup.apply(weight, flat, pad).reshape(*ids.shape, weight.shape[1])


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        if padding_idx is not None:
            if padding_idx >= num_embeddings or padding_idx < -num_embeddings:
                raise ValueError("padding_idx out of range")
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.normal_(self.weight)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].fill_(0)

    def forward(self, ids: Tensor) -> Tensor:
        return embedding(ids, self.weight, self.padding_idx)


def embedding_bag(ids: Tensor, weight: Tensor, offsets: Tensor | None, mode: str = "mean") -> Tensor:
    if mode not in {"sum", "mean", "max"}:
        raise ValueError(f"unknown mode {mode}")
    if offsets is None:
        rows = weight[ids.long()]  # (B, L, D)
        if mode == "max":
            return rows.amax(dim=1)
        return rows.sum(dim=1) if mode == "sum" else rows.mean(dim=1)
    flat = ids.long()
    n, b = flat.numel(), offsets.numel()
    sizes = torch.diff(offsets.long(), append=torch.tensor([n], device=offsets.device))  # (B,)
    bag = torch.repeat_interleave(torch.arange(b, device=flat.device), sizes)  # (N,)
    member = bag.unsqueeze(0) == torch.arange(b, device=flat.device).unsqueeze(1)  # (B, N)
    rows = weight[flat]  # (N, D)
    if mode == "max":
        masked = torch.where(member.unsqueeze(-1), rows.unsqueeze(0), float("-inf"))  # (B, N, D)
        best = masked.amax(dim=1) if n else weight.new_zeros(b, weight.shape[1])
        return torch.where(sizes.unsqueeze(-1) > 0, best, torch.zeros_like(best))
    sums = member.to(weight.dtype) @ rows  # (B, D)
    if mode == "sum":
        return sums
    return sums / sizes.clamp(min=1).unsqueeze(-1).to(weight.dtype)
