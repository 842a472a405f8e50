"""Variant: each micro-batch's mean loss weighted by its share of the real targets,
micro-batches with none skipped (their mean would be 0/0)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def accumulate_and_step(model, optimizer, micro_batches, *, ignore_index=-100, max_grad_norm=None):
    counts = [int((targets != ignore_index).sum()) for _, targets in micro_batches]
    n_real = max(sum(counts), 1)
    optimizer.zero_grad()
    loss = 0.0
    for (inputs, targets), n in zip(micro_batches, counts):
        if n == 0:
            continue
        logits = model(inputs)  # (..., C)
        mean = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=ignore_index)
        (mean * (n / n_real)).backward()
        loss += mean.item() * n / n_real
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm, foreach=False)
    optimizer.step()
    return loss


def train_epoch(model, optimizer, loader, accumulation_steps, *, ignore_index=-100, max_grad_norm=None):
    losses, group = [], []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulation_steps:
            losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
            group = []
    if group:
        losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
    return losses
