"""Variant: backpropagates each micro-batch's summed loss unscaled, then divides every
accumulated gradient by the number of real targets once, before clipping; train_epoch
takes its groups with itertools.islice."""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn


def accumulate_and_step(model, optimizer, micro_batches, *, ignore_index=-100, max_grad_norm=None):
    model.zero_grad(set_to_none=True)
    total = torch.zeros(())
    n_real = 0
    for inputs, targets in micro_batches:
        logits = model(inputs)  # (..., C)
        loss_sum = F.cross_entropy(
            logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index, reduction="sum"
        )
        loss_sum.backward()
        total = total + loss_sum.detach().cpu()
        n_real += int((targets != ignore_index).sum())
    n_real = max(n_real, 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(n_real)  # sum over targets -> mean over targets
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total.item() / n_real


def train_epoch(model, optimizer, loader, accumulation_steps, *, ignore_index=-100, max_grad_norm=None):
    batches = iter(loader)
    losses = []
    while group := list(islice(batches, accumulation_steps)):
        losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
    return losses
