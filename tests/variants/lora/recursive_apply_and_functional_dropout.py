"""Variant: the adapter path as matmuls with the operator (x @ A.T @ B.T, evaluated left to
right, so never B @ A), functional dropout keyed on self.training, A initialised by an
explicit uniform bound; merge and unmerge with addmm_ on the weight's data; apply_lora as
a recursion over named_children; lora_state_dict from named_parameters; count_trainable
deduplicating by identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha, *, dropout=0.0):
        super().__init__()
        if not r >= 1:
            raise ValueError("r must be >= 1")
        base.requires_grad_(False)
        self.base, self.r, self.alpha, self.p = base, r, alpha, dropout
        self.scaling = float(alpha) / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        bound = 1.0 / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if not self.merged:
            h = F.dropout(x, self.p, self.training)
            y = y + self.scaling * (h @ self.lora_A.T @ self.lora_B.T)
        return y

    def merge(self):
        if not self.merged:
            self.base.weight.data.addmm_(self.lora_B.data, self.lora_A.data, alpha=self.scaling)
            self.merged = True

    def unmerge(self):
        if self.merged:
            self.base.weight.data.addmm_(self.lora_B.data, self.lora_A.data, alpha=-self.scaling)
            self.merged = False


def _wrap(module, targets, r, alpha, dropout):
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name in targets:
            setattr(module, name, LoRALinear(child, r, alpha, dropout=dropout))
        else:
            _wrap(child, targets, r, alpha, dropout)


def apply_lora(model, target_modules, r, alpha, *, dropout=0.0):
    model.requires_grad_(False)
    _wrap(model, set(target_modules), r, alpha, dropout)
    return model


def lora_state_dict(model):
    return {name: p.detach() for name, p in model.named_parameters() if name.endswith((".lora_A", ".lora_B"))}


def count_trainable(model):
    unique = {id(p): p for p in model.parameters() if p.requires_grad}
    return int(sum(p.numel() for p in unique.values()))
