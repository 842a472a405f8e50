"""A training loop: gradient clipping, evaluation, checkpoints and exact resume.

You write the pieces every training script has: `clip_grad_norm` (torch's
`nn.utils.clip_grad_norm_`, which is forbidden here), an epoch of training with an
optional scheduler and clipping, an evaluation pass that leaves the model as it found it,
and a checkpoint that resumes training exactly: two epochs in a row give the same
parameters, bit for bit, as one epoch, a checkpoint, fresh objects loaded from it and a
second epoch, with dropout and a shuffling DataLoader in the loop. The grader compares
your epochs with torch's in float64, watches the model's mode and autograd during every
forward, and resumes runs from your checkpoints.

Run the grader:   make check topic=training_loop
Hints:            exercises/training_loop/README.md
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def clip_grad_norm(parameters: Tensor | Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale the gradients of `parameters` in place so that their total 2-norm is at most
    `max_norm`, as `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` does.

    The total norm is the 2-norm of all gradients together, as if they were flattened and
    concatenated into one vector (not the norm of each parameter on its own). Every
    gradient is multiplied by the same coefficient, min(1, max_norm / (total_norm + 1e-6)):
    the 1e-6 is torch's, and gradients whose norm is already below max_norm are left as
    they are (never scaled up).

    Args:
        parameters: one tensor, or any iterable of tensors (a list, or a generator such as
            `model.parameters()`, which can be iterated only once). Tensors whose `.grad`
            is None are skipped. All gradients have one dtype (float32 or float64) and
            are on one device.
        max_norm: the largest total norm allowed, > 0.

    Returns:
        The total norm of the gradients before clipping: a 0-dim tensor in the gradients'
        dtype, on their device; `torch.tensor(0.0)` when no tensor has a gradient.

    Rules: each `.grad` is modified in place (`p.grad` stays the same tensor object:
    optimizers and hooks may hold it); the parameters themselves are not modified. No
    torch.nn.utils.clip_grad_norm_ (nor clip_grad_norm, get_total_norm,
    clip_grads_with_norm_): a profile hook catches them however they are imported.
    """
    # BEGIN SOLUTION
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    # A generator would be exhausted by the first pass: keep the gradients in a list.
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    # The norm of the per-tensor norms is the norm of all elements together:
    # sqrt(sum_i ||g_i||^2). Summing the norms, or clipping each tensor by its own norm,
    # is a different vector.
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])  # (n_tensors,)
    total = torch.linalg.vector_norm(norms)
    # A tensor coefficient, clamped rather than tested with `if`: no device sync, and the
    # same ops whether or not the clipping bites.
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)  # in place: p.grad stays the same tensor
    return total
    # END SOLUTION


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    max_grad_norm: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """One pass over `loader`, one optimizer step per batch; returns the epoch's mean loss.

    Puts the model in train mode first (and leaves it there). For each batch, in this
    order: clear the gradients; logits = model(inputs); loss = F.cross_entropy(logits,
    targets) (the mean over the batch); loss.backward(); if `max_grad_norm` is given,
    `clip_grad_norm(model.parameters(), max_grad_norm)` (yours); `optimizer.step()`; then,
    if a scheduler is given, `scheduler.step()`: learning-rate schedules here are per
    batch, so the scheduler steps once after every optimizer step.

    Args:
        model: maps inputs (N, F) float32 to logits (N, C); may hold dropout, whose masks
            come from torch's global generator.
        optimizer: a torch.optim optimizer over the model's parameters. Gradients left in
            `.grad` on entry are stale: they must not leak into the first step.
        loader: any iterable of (inputs (N, F) float32, targets (N,) int64 class indices)
            batches, iterated once: a list, or a DataLoader. Batches may differ in size
            (the last one is often smaller).
        max_grad_norm: if given, clip the total gradient norm to it after each backward,
            before the step.
        scheduler: if given, stepped once after each optimizer step.

    Returns:
        The mean loss over every sample of the epoch, as a Python float: each batch's
        loss (computed before its step) weighted by its number of samples, i.e.
        sum(loss_b * N_b) / sum(N_b), not the mean of the batch means.

    Rules: call `model(inputs)` once per batch; do not modify the batch tensors; no
    torch.nn.utils.clip_grad_norm_. What `.grad` holds after the call is up to you.
    """
    # BEGIN SOLUTION
    model.train()  # dropout on; evaluate() may have left the model in eval mode
    total, count = 0.0, 0  # total becomes a tensor on the loss's device: no sync per batch
    for inputs, targets in loader:
        optimizer.zero_grad()  # backward adds into .grad: clear the last step's gradient
        logits = model(inputs)  # (N, C)
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        if max_grad_norm is not None:
            # After backward (the gradient exists), before step (which uses it).
            clip_grad_norm(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()  # after optimizer.step(): the first step uses the initial lr
        n = targets.shape[0]
        # A smaller last batch counts for fewer samples: weight each mean by its size.
        total = total + loss.detach() * n
        count += n
    return float(total) / max(count, 1)
    # END SOLUTION


def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> float:
    """The mean cross-entropy of `model` over every sample of `loader`, in eval mode and
    without autograd, leaving the model in the modes it was in.

    Args:
        model: as in `train_epoch`. Its own mode, and each submodule's (one may be frozen
            in eval mode while the rest trains), is restored on return, exactly as found.
        loader: as in `train_epoch`.

    Returns:
        sum(loss_b * N_b) / sum(N_b) over the batches, F.cross_entropy's mean per batch,
        as a Python float.

    Rules: every forward runs with every module in eval mode (dropout off) and with
    autograd off (`torch.no_grad()` or `torch.inference_mode()`): no graph is built, no
    gradient changes. Parameters, gradients and the batch tensors are not modified.
    """
    # BEGIN SOLUTION
    # model.train(was_training) would put a submodule frozen in eval mode back in train
    # mode: remember every module's own flag.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():  # no graph: evaluation needs no gradients, and saves memory
            for inputs, targets in loader:
                loss = F.cross_entropy(model(inputs), targets)
                n = targets.shape[0]
                total = total + loss * n
                count += n
    finally:
        for m, training in modes.items():
            m.training = training
    return float(total) / max(count, 1)
    # END SOLUTION


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    generator: torch.Generator,
) -> None:
    """Write to `path` (with torch.save) everything needed to resume training exactly.

    That is: the model's state_dict, the optimizer's (Adam's moments and step count), the
    scheduler's, `epoch` (the number of epochs completed), the state of `generator` (the
    one the DataLoader shuffles with) and the state of torch's global CPU generator
    (`torch.get_rng_state()`), which dropout draws from.

    Args:
        path: the file to write (its folder exists; the grader's is a temporary folder).
        model, optimizer, scheduler: the objects being trained.
        epoch: how many epochs are complete, a Python int.
        generator: a CPU torch.Generator.

    The file must load with `torch.load(path, weights_only=True)`: only tensors and plain
    data (dicts, lists, numbers, strings), no objects, no functions. Nothing being trained
    is modified, and no global state (the RNG included) is changed by saving.
    """
    # BEGIN SOLUTION
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),  # Adam's exp_avg, exp_avg_sq and step
            "scheduler": scheduler.state_dict(),  # last_epoch: where the schedule is
            "epoch": int(epoch),
            "generator": generator.get_state(),  # the next epoch's shuffling order
            "torch_rng": torch.get_rng_state(),  # the next epoch's dropout masks
        },
        path,
    )
    # END SOLUTION


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> int:
    """Restore a `save_checkpoint` file into freshly built objects, in place.

    After the call, the model's parameters and buffers, the optimizer's state and
    hyperparameters, the scheduler's state, `generator`'s state and torch's global CPU
    generator are all exactly as they were when the checkpoint was saved, so that training
    on continues as if it had never stopped.

    Args:
        path: a file written by `save_checkpoint`.
        model, optimizer, scheduler: fresh objects of the same kinds (the optimizer over
            this model's parameters, the scheduler over this optimizer).
        generator: a fresh CPU torch.Generator, to be given the saved state.

    Returns:
        The `epoch` that was saved, unchanged, as a Python int.
    """
    # BEGIN SOLUTION
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    generator.set_state(checkpoint["generator"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return int(checkpoint["epoch"])
    # END SOLUTION
