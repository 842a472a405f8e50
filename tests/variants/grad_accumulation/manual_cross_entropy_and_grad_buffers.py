"""Variant: cross-entropy written with log_softmax, gather and a mask; gradients taken
with torch.autograd.grad per micro-batch (micro-batches with no real target skipped) and
summed into buffers by hand; the norm clipped by hand with clip_grad_norm_'s formula."""

from __future__ import annotations

import torch


def accumulate_and_step(model, optimizer, micro_batches, *, ignore_index=-100, max_grad_norm=None):
    params = [p for p in model.parameters() if p.requires_grad]
    masks = [targets != ignore_index for _, targets in micro_batches]
    n_real = max(int(sum(m.sum() for m in masks)), 1)
    buffers = [torch.zeros_like(p) for p in params]
    total = 0.0
    for (inputs, targets), real in zip(micro_batches, masks):
        if not real.any():
            continue  # nothing to learn from: skip the forward altogether
        logp = model(inputs).log_softmax(-1)  # (..., C)
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (...)
        loss_sum = -(picked * real).sum()
        grads = torch.autograd.grad(loss_sum / n_real, params, allow_unused=True)
        for buf, g in zip(buffers, grads):
            if g is not None:
                buf.add_(g)
        total += loss_sum.item()
    if max_grad_norm is not None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b) for b in buffers]))
        coef = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
        for b in buffers:
            b.mul_(coef)
    for p, buf in zip(params, buffers):
        p.grad = buf  # replaces any stale gradient
    optimizer.step()
    return total / n_real


def train_epoch(model, optimizer, loader, accumulation_steps, *, ignore_index=-100, max_grad_norm=None):
    losses, group = [], []
    for i, batch in enumerate(loader, start=1):
        group.append(batch)
        if i % accumulation_steps == 0:
            losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
            group = []
    if group:
        losses.append(accumulate_and_step(model, optimizer, group, ignore_index=ignore_index, max_grad_norm=max_grad_norm))
    return losses
