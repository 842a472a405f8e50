"""LoRA from scratch: a low-rank adapter around a frozen nn.Linear, merge and unmerge, and
the functions that turn a model into a LoRA model and save only what was trained.

LoRA (Hu et al., 2021) fine-tunes a pretrained linear layer W (out, in) by learning a
low-rank update instead: y = W x + (alpha / r) * B A x, with A (r, in) and B (out, r),
r much smaller than in and out. W stays frozen; only A and B train, r * (in + out)
numbers per layer instead of in * out. The grader checks the values and gradients
against float64, the initialisation (the model is unchanged at the start), merge and
unmerge, dropout's place, which modules apply_lora replaces and what it freezes, the
trainable-parameter count, a saved adapter reloaded into a fresh model, and that the
adapter's work is r * (in + out) per token, never the full (out, in) update.

Run the grader:   make check topic=lora
Hints:            exercises/lora/README.md
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """An nn.Linear with a trainable low-rank update:
        forward(x) = base(x) + dropout(x) @ lora_A.T @ lora_B.T * scaling

    Args:
        base: the nn.Linear(in_features, out_features) to adapt, kept as self.base (the
            same object, not a copy); its weight and bias (if any) are frozen here
            (requires_grad False) and are never trained.
        r: the rank, at least 1 (else ValueError).
        alpha: the scale numerator: scaling = alpha / r (a float: alpha=6, r=4 gives 1.5).
        dropout: the probability of nn.Dropout applied to x on the adapter path only
            (the base path never sees dropout); active in training, off in eval.

    Attributes:
        base: the wrapped nn.Linear.
        lora_A: nn.Parameter (r, in_features), initialised as nn.Linear initialises its
            weight: kaiming-uniform with a = sqrt(5), i.e. uniform in
            [-1/sqrt(in_features), 1/sqrt(in_features)].
        lora_B: nn.Parameter (out_features, r), zeros: at initialisation the layer
            computes exactly what base does.
        lora_A and lora_B are on base.weight's device, in its dtype, and are the only
        trainable parameters.
        r, alpha: as given; scaling: alpha / r.
        merged: bool, False until merge().
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, *, dropout: float = 0.0) -> None:
        super().__init__()
        raise NotImplementedError("lora.LoRALinear.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (..., in_features) in base's dtype, on its device; left unmodified.

        Returns:
            (..., out_features) in x's dtype. Once merged, base(x) alone (the update is
            already in base.weight). The adapter path is computed right to left as two
            thin matmuls, (x @ A.T) then @ B.T: 2 * r * (in + out) FLOPs per token, never
            the (out, in) product B @ A.
        """
        raise NotImplementedError("lora.LoRALinear.forward")

    def merge(self) -> None:
        """Fold the update into the base weight, in place: base.weight += scaling * B @ A,
        then merged = True. The base weight stays the same, frozen, Parameter. Calling it
        again does nothing."""
        raise NotImplementedError("lora.LoRALinear.merge")

    def unmerge(self) -> None:
        """Undo merge(), in place: base.weight -= scaling * B @ A, then merged = False.
        Calling it when not merged does nothing."""
        raise NotImplementedError("lora.LoRALinear.unmerge")


def apply_lora(model: nn.Module, target_modules, r: int, alpha: float, *, dropout: float = 0.0) -> nn.Module:
    """Turn model into a LoRA model, in place, and return it.

    Every nn.Linear anywhere in model whose attribute name (the last part of its
    qualified name: "q_proj" for "blocks.0.attn.q_proj") is in target_modules is
    replaced, on its parent, by LoRALinear(that linear, r, alpha, dropout=dropout). Every
    other parameter of the model is frozen (requires_grad False), so that afterwards
    the trainable parameters are exactly the adapters' lora_A and lora_B. Modules that
    are not nn.Linear are never replaced, whatever their name.

    Args:
        model: any nn.Module.
        target_modules: a collection of attribute names (list, tuple or set of str).
        r, alpha, dropout: as LoRALinear's.

    Returns:
        model itself.
    """
    raise NotImplementedError("lora.apply_lora")


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters' weights: the lora_A and lora_B entries of model.state_dict(),
    keyed exactly as there ("blocks.0.attn.q_proj.lora_A"), so that
    fresh_model.load_state_dict(saved, strict=False) restores them into a model that
    apply_lora prepared the same way.

    Returns:
        dict of str -> Tensor, nothing else (no base weights, no other parameters).
    """
    raise NotImplementedError("lora.lora_state_dict")


def count_trainable(model: nn.Module) -> int:
    """The number of trainable scalars: the sum of numel() over model's parameters with
    requires_grad True, each Parameter counted once (a shared one is not counted twice).

    Returns:
        int (a Python int, not a tensor).
    """
    raise NotImplementedError("lora.count_trainable")
