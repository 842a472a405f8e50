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
        raise NotImplementedError("moe.TopKRouter.__init__")

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
        raise NotImplementedError("moe.TopKRouter.forward")


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
    raise NotImplementedError("moe.load_balancing_loss")


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
        raise NotImplementedError("moe.MoE.__init__")

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
        raise NotImplementedError("moe.MoE.forward")
