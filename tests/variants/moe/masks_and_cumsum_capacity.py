"""Variant: routing by a softmax over all experts renormalised over the top k, the loss from
one-hot counts, and dispatch by per-expert masks (torch.where) with the capacity rank from a
cumulative sum of one-hot assignments in token order, instead of a stable sort.

Mixture of experts: top-k routing, the load-balancing loss, sparse dispatch and capacity.

A mixture-of-experts (MoE) layer replaces a transformer's one feed-forward network by
n_experts of them and a router that sends each token to only k of them (Mixtral: 8 experts,
k = 2). You write the router (top-k of a linear gate, softmax over the chosen k), the
Switch Transformer load-balancing loss, and the layer itself: each expert runs once per
forward on exactly the tokens routed to it, and the results are scattered back weighted by
the router, with an optional capacity that drops the assignments an expert has no room for.
The grader compares everything with a dense float64 computation, checks the gradients to
the gate and to every expert, and counts expert calls, FLOPs and aten ops.

Run the grader:   make check topic=moe
Hints:            exercises/moe/README.md
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Expert(nn.Module):
    """One expert: a SwiGLU feed-forward network (given; nothing to write here).

    forward(x) = down_proj(silu(gate_proj(x)) * up_proj(x)) for x of shape (M, d_model),
    any number of rows M (including 0), returning (M, d_model).
    """

    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.up_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TopKRouter(nn.Module):
    def __init__(self, d_model: int, n_experts: int, k: int) -> None:
        super().__init__()
        if k < 1 or k > n_experts:
            raise ValueError("k out of range")
        self.n_experts, self.k = n_experts, k
        self.gate = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1)  # over all E
        indices = logits.topk(self.k, dim=-1).indices  # of the logits: probabilities can tie at 0
        top = probs.gather(-1, indices)
        return top / top.sum(dim=-1, keepdim=True), indices, logits


def load_balancing_loss(logits: Tensor, indices: Tensor, n_experts: int) -> Tensor:
    assign = F.one_hot(indices, n_experts).to(logits.dtype)  # (N, k, E)
    f = assign.sum(dim=(0, 1)) / (indices.shape[0] * indices.shape[1])
    p = torch.softmax(logits, dim=-1).mean(dim=0)
    return (f * p).sum() * n_experts


class MoE(nn.Module):
    def __init__(self, d_model: int, d_hidden: int, n_experts: int, k: int, *, capacity_factor: float | None = None) -> None:
        super().__init__()
        self.n_experts, self.k, self.capacity_factor = n_experts, k, capacity_factor
        self.router = TopKRouter(d_model, n_experts, k)
        self.experts = nn.ModuleList([Expert(d_model, d_hidden) for _ in range(n_experts)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        flat = x.flatten(0, 1)  # (N, D)
        weights, indices, logits = self.router(flat)
        aux = load_balancing_loss(logits, indices, self.n_experts)
        n, k = indices.shape
        onehot = F.one_hot(indices.reshape(-1), self.n_experts)  # (N*k, E), token-major order
        keep = torch.ones(n, k, dtype=torch.bool, device=x.device)
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * n * k / self.n_experts)
            # 1-based position of each assignment in its expert's queue, in token order
            position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1).view(n, k)
            keep = position <= capacity
        y = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where((indices == e) & keep)
            if token.numel():
                y.index_add_(0, token, expert(flat[token]) * weights[token, slot].unsqueeze(-1))
        return y.view(shape), aux
