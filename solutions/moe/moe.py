"""Mixture of experts: top-k routing, the load-balancing loss, sparse dispatch and capacity.

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
    """Chooses k of n_experts experts for each token, and how much each one counts.

    Args:
        d_model: the size of a token's vector.
        n_experts: E, how many experts there are.
        k: how many experts each token goes to; 1 <= k <= n_experts, else ValueError
            (raised by the constructor).

    Attributes:
        gate: nn.Linear(d_model, n_experts, bias=False), the only parameter.
        n_experts, k: ints, as given.
    """

    def __init__(self, d_model: int, n_experts: int, k: int) -> None:
        super().__init__()
        # BEGIN SOLUTION
        if not 1 <= k <= n_experts:
            raise ValueError(f"k must be between 1 and n_experts={n_experts}, got {k}")
        self.n_experts = n_experts
        self.k = k
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        # END SOLUTION

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Route each of N tokens to its k best experts (Mixtral's routing).

        Args:
            x: (N, d_model) floating point, on the gate's device and in its dtype.

        Returns:
            (weights, indices, logits):
            - logits: (N, E) = self.gate(x), in x's dtype.
            - indices: (N, k) int64, the experts of the k largest logits of each token,
              largest first (as torch.topk returns them).
            - weights: (N, k) in x's dtype, the softmax over those k logits only (each row
              sums to 1; weights[:, j] belongs to indices[:, j]). Stable for large logits,
              and differentiable with respect to the gate's weight (do not detach it). With
              k = 1 every weight is 1.
            No Python loop over tokens.
        """
        # BEGIN SOLUTION
        logits = self.gate(x)  # (N, E)
        top_logits, indices = logits.topk(self.k, dim=-1)  # (N, k) each, largest first
        # Softmax over the chosen k, not over all E: the weights of a token sum to 1. The
        # same numbers as softmax over all E renormalised over the top k, in one step.
        # torch.softmax subtracts the row's maximum first, so large logits cannot overflow.
        weights = top_logits.softmax(dim=-1)  # (N, k)
        return weights, indices, logits
        # END SOLUTION


def load_balancing_loss(logits: Tensor, indices: Tensor, n_experts: int) -> Tensor:
    """The Switch Transformer load-balancing loss, for top-k routing.

    loss = n_experts * sum_e f_e * P_e, where
    - f_e is the fraction of the N * k (token, slot) assignments in `indices` that went to
      expert e (counts / (N * k): the f_e sum to 1);
    - P_e is the mean over the N tokens of softmax(logits, dim=-1)[:, e], the softmax over
      all E experts.
    Perfectly balanced routing gives 1; everything on one expert gives up to n_experts.

    Args:
        logits: (N, E) floating point, the router's logits (E = n_experts).
        indices: (N, k) int64, the experts each token was sent to. An expert may receive no
            assignment at all.
        n_experts: E.

    Returns:
        A 0-dim tensor in logits' dtype, on logits' device. The gradient flows through P
        only: f is a count, with no gradient. The softmax is stable for large logits. No
        Python loop over tokens or experts.
    """
    # BEGIN SOLUTION
    probs = logits.softmax(dim=-1)  # (N, E)
    p = probs.mean(dim=0)  # (E,) the mean router probability of each expert
    # minlength: an expert that got no assignment still needs its (zero) entry.
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts)  # (E,) int64
    f = counts.to(logits.dtype) / indices.numel()  # (E,) fractions of the N * k assignments
    return n_experts * (f * p).sum()
    # END SOLUTION


class MoE(nn.Module):
    """A sparse mixture-of-experts feed-forward layer with top-k routing.

    Args:
        d_model: the size of a token's vector.
        d_hidden: each expert's hidden size.
        n_experts: E, how many experts.
        k: experts per token (1 <= k <= E).
        capacity_factor: None (no limit), or c > 0: each expert then takes at most
            capacity = math.ceil(c * N * k / n_experts) assignments per forward, computed
            with exactly that Python expression, where N = B * T.

    Attributes:
        router: TopKRouter(d_model, n_experts, k).
        experts: nn.ModuleList of n_experts Expert(d_model, d_hidden) (the given class).
        n_experts, k, capacity_factor: as given.
        No other parameters.
    """

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, k: int, *, capacity_factor: float | None = None) -> None:
        super().__init__()
        # BEGIN SOLUTION
        self.n_experts = n_experts
        self.k = k
        self.capacity_factor = capacity_factor
        self.router = TopKRouter(d_model, n_experts, k)
        # A ModuleList, not a list: the experts' parameters must be registered to be trained.
        self.experts = nn.ModuleList(Expert(d_model, d_hidden) for _ in range(n_experts))
        # END SOLUTION

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Route every token, run each expert once on its tokens, combine.

        Args:
            x: (B, T, d_model) floating point, possibly non-contiguous, in the parameters'
                dtype and on their device. N = B * T tokens, in flattened B * T order.

        Returns:
            (y, aux_loss):
            - y: (B, T, d_model) in x's dtype: for each token, the sum over its k slots of
              weight * expert(token), with (weights, indices) from self.router on the
              (N, d_model) tokens. The same values as computing every chosen expert densely.
            - aux_loss: 0-dim, load_balancing_loss(logits, indices, n_experts) of the
              router's assignments, all of them, before any capacity drop.

        Work:
            - Each expert is called at most once per forward, as a module
              (self.experts[e](rows), not .forward, so its hooks run), on exactly the
              (M, d_model) rows of the tokens routed to it (M may be 0: skip it or call it
              with 0 rows),
              gathered in one indexing op; the weighted outputs are added back into y in one
              op per expert (index_add_). An expert never sees a token not routed to it (no
              dense compute of every expert on every token).
            - A loop over the E experts is fine; no Python loop over tokens: the number of
              aten ops does not grow with N.
            Capacity (capacity_factor not None): an expert keeps the assignments of the
            earliest tokens (lowest flattened index) up to its capacity and drops the rest;
            a dropped assignment contributes nothing to y (the other weights are not
            renormalised), and the token keeps its other slots. A token whose every slot is
            dropped gets y = 0.
        """
        # BEGIN SOLUTION
        B, T, D = x.shape
        flat = x.reshape(B * T, D)  # (N, D); reshape, not view: x may be non-contiguous
        weights, indices, logits = self.router(flat)  # (N, k), (N, k), (N, E)
        aux_loss = load_balancing_loss(logits, indices, self.n_experts)  # before any drop

        n, k = indices.shape
        expert_of = indices.reshape(-1)  # (N*k,) assignment a = token * k + slot
        weight_of = weights.reshape(-1)  # (N*k,)
        # Group the assignments by expert. A stable sort keeps each expert's assignments in
        # token order, which is the order the capacity rule keeps them in.
        order = torch.argsort(expert_of, stable=True)  # (N*k,)
        counts = torch.bincount(expert_of, minlength=self.n_experts)  # (E,)
        token_of = order // k  # (N*k,) the token of each sorted assignment
        weight_sorted = weight_of[order]  # (N*k,)

        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * n * k / self.n_experts)
            starts = torch.cumsum(counts, dim=0) - counts  # (E,) first sorted slot of each expert
            rank = torch.arange(n * k, device=x.device) - starts[expert_of[order]]  # (N*k,) place in its expert's queue
            keep = rank < capacity
            # The kept assignments, still grouped by expert and in token order.
            token_of, weight_sorted = token_of[keep], weight_sorted[keep]
            counts = counts.clamp(max=capacity)

        y = torch.zeros_like(flat)  # (N, D)
        # One host sync for all the group sizes, then one slice per expert (a view).
        for e, (tokens, w) in enumerate(zip(token_of.split(counts.tolist()), weight_sorted.split(counts.tolist()))):
            if tokens.numel() == 0:
                continue  # an expert nobody chose does no work
            out = self.experts[e](flat[tokens])  # (M, D): this expert's tokens only
            # Add, not assign: a token's k outputs come from k experts and must be summed.
            y.index_add_(0, tokens, out * w[:, None].to(out.dtype))
        return y.reshape(B, T, D), aux_loss
        # END SOLUTION
