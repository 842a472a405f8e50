"""Variant: the scaler keeps a stage per optimizer ("ready", "unscaled", "stepped") as
GradScaler does, accumulates found-inf in a float32 tensor without a sync per gradient,
divides the gradients by the scale (rather than multiplying by its reciprocal) and keeps
the scale as a float32 tensor updated with torch.where; amp_train_step computes the loss
outside the autocast block from float32 logits and clears the gradients to zero in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DynamicLossScaler:
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.scale_t = torch.full((), init_scale, dtype=torch.float32)
        self.growth_factor, self.backoff_factor, self.growth_interval = float(growth_factor), float(backoff_factor), int(growth_interval)
        self.tracker = 0
        self.stages = {}
        self.found = torch.zeros((), dtype=torch.float32)

    def scale(self, loss):
        return loss * self.scale_t.to(loss.device)

    def unscale_(self, optimizer):
        stage = self.stages.get(id(optimizer), "ready")
        if stage != "ready":
            raise RuntimeError(f"unscale_() called when the optimizer is {stage}")
        found = self.found.to(self.scale_t.device)
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        found = torch.maximum(found, (~torch.isfinite(p.grad)).any().float().to(found.device))
                        p.grad.div_(self.scale_t.to(p.grad.device))
        self.found = found
        self.stages[id(optimizer)] = "unscaled"

    def step(self, optimizer):
        stage = self.stages.get(id(optimizer), "ready")
        if stage == "stepped":
            raise RuntimeError("step() called twice")
        if stage == "ready":
            self.unscale_(optimizer)
        self.stages[id(optimizer)] = "stepped"
        return None if self.found.item() > 0 else optimizer.step()

    def update(self):
        inf = self.found.item() > 0
        s = self.scale_t.double()
        if inf:
            self.scale_t = (s * self.backoff_factor).float()
            self.tracker = 0
        elif self.tracker + 1 >= self.growth_interval:
            grown = (s * self.growth_factor).float()
            self.scale_t = torch.where(torch.isfinite(grown), grown, self.scale_t)
            self.tracker = 0
        else:
            self.tracker += 1
        self.stages = {}
        self.found = torch.zeros((), dtype=torch.float32)

    def state_dict(self):
        return {"scale": self.scale_t.item(), "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self.tracker}


def amp_train_step(model, optimizer, scaler, batch, *, device_type, dtype, max_grad_norm=None):
    x, y = batch
    optimizer.zero_grad(set_to_none=False)
    with torch.autocast(device_type, dtype=dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    scaler.scale(loss).backward()
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()
