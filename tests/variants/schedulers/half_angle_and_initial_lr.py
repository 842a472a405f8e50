"""Variant: the cosine written with the half-angle identity (1 + cos x) / 2 = cos^2(x / 2),
both decays through one interpolation helper, and WarmupCosine reading each group's
"initial_lr" (what LRScheduler records as base_lrs, and what the optimizer's state_dict
restores) through _get_closed_form_lr.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def check_schedule(warmup_steps: int, total_steps: int) -> None:
    if not (total_steps >= 1 and 0 <= warmup_steps <= total_steps):
        raise ValueError("invalid schedule")


def _shape(step, warmup_steps, total_steps, decay):
    """(factor of the peak, True) during warm-up and decay; (None, False) from total_steps on."""
    check_schedule(warmup_steps, total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps, True
    if step < total_steps:
        return decay((step - warmup_steps) / (total_steps - warmup_steps)), False
    return None, False


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    factor, warming = _shape(step, warmup_steps, total_steps, lambda p: math.cos(math.pi * p / 2) ** 2)
    if factor is None:
        return min_lr
    return base_lr * factor if warming else min_lr + (base_lr - min_lr) * factor


def linear_warmup_decay(step: int, *, warmup_steps: int, total_steps: int, base_lr: float) -> float:
    factor, _ = _shape(step, warmup_steps, total_steps, lambda p: 1.0 - p)
    return 0.0 if factor is None else base_lr * factor


class WarmupCosine(LRScheduler):
    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> None:
        check_schedule(warmup_steps, total_steps)
        self.warmup_steps, self.total_steps, self.min_lr = warmup_steps, total_steps, min_lr
        super().__init__(optimizer)

    def _get_closed_form_lr(self):
        return [
            warmup_cosine(self.last_epoch, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                          base_lr=group["initial_lr"], min_lr=self.min_lr)
            for group in self.optimizer.param_groups
        ]

    def get_lr(self):
        return self._get_closed_form_lr()
