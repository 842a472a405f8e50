"""Mistake: the gradient is clipped after optimizer.step(), so the step uses the unclipped gradient.

caught-by: test_step_matches_full_batch
hint: 4
same-mistake-as: never_clips
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
    total = 0.0
    for inputs, targets in micro_batches:
        logits = model(inputs)  # (..., C)
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),  # (N, C)
            targets.reshape(-1),  # (N,)
            ignore_index=ignore_index,
            reduction="sum",
        )
        (loss_sum / n_real).backward()
        total = total + loss_sum.detach()

    optimizer.step()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # MISTAKE: too late, the step is taken
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
