"""Mistake: the micro-batches are concatenated and run through the model in one forward, which needs the memory accumulation exists to save.

caught-by: test_model_sees_one_micro_batch_at_a_time, test_backward_after_each_micro_batch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def accumulate_and_step(model, optimizer, micro_batches, *, ignore_index=-100, max_grad_norm=None):
    """One optimizer step on the union of micro_batches, run one micro-batch at a time."""
    n_real = int(sum((targets != ignore_index).sum() for _, targets in micro_batches))
    n_real = max(n_real, 1)

    optimizer.zero_grad()
    # MISTAKE: one forward on the whole batch: right values, full-batch memory
    inputs = torch.cat([x for x, _ in micro_batches])
    targets = torch.cat([y for _, y in micro_batches])
    logits = model(inputs)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction="sum")
    (total / n_real).backward()
    total = total.detach()

    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return float(total) / n_real


def train_epoch(model, optimizer, loader, accumulation_steps, *, ignore_index=-100, max_grad_norm=None):
    """One accumulate_and_step per group of accumulation_steps batches; returns the losses."""
    losses = []
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulation_steps:
            losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
            group = []
    if group:
        losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
    return losses
