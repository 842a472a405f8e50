"""Variant: the total norm of all gradients flattened into one vector, a Python-float
coefficient applied only when it bites; batch losses summed as Python floats; evaluate
under torch.inference_mode, restoring each module's mode with m.train(flag) parents first;
a checkpoint nested differently (rng and meta sections), saved with torch.random's names."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_grad_norm(parameters, max_norm):
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if len(grads) == 0:
        return torch.tensor(0.0)
    total = torch.cat([g.reshape(-1) for g in grads]).norm(2)
    coef = max_norm / (total.item() + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def train_epoch(model, optimizer, loader, *, max_grad_norm=None, scheduler=None):
    model.train()
    loss_sum, samples = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y, reduction="sum") / y.numel()
        loss.backward()
        if max_grad_norm is not None:
            clip_grad_norm(list(model.parameters()), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * y.numel()
        samples += y.numel()
    model.zero_grad(set_to_none=True)
    return loss_sum / samples


def evaluate(model, loader):
    modes = [(m, m.training) for m in model.modules()]  # pre-order: parents first
    model.eval()
    loss_sum, samples = 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            loss_sum += F.cross_entropy(model(x), y, reduction="sum").item()
            samples += y.numel()
    for m, flag in modes:
        m.train(flag)  # recurses, but each child is set again after its parent
    return loss_sum / samples


def save_checkpoint(path, *, model, optimizer, scheduler, epoch, generator):
    torch.save(
        {
            "state": {"model": model.state_dict(), "optim": optimizer.state_dict(), "sched": scheduler.state_dict()},
            "rng": {"cpu": torch.random.get_rng_state(), "loader": generator.get_state()},
            "meta": {"epoch": epoch},
        },
        str(path),
    )


def load_checkpoint(path, *, model, optimizer, scheduler, generator):
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["state"]["model"])
    optimizer.load_state_dict(ckpt["state"]["optim"])
    scheduler.load_state_dict(ckpt["state"]["sched"])
    torch.random.set_rng_state(ckpt["rng"]["cpu"])
    generator.set_state(ckpt["rng"]["loader"])
    return ckpt["meta"]["epoch"]
