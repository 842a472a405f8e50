"""Learning-rate schedules from scratch: linear warm-up, cosine and linear decay, and an LRScheduler.

You write the two schedules almost every transformer is trained with, as functions of the
step, with their boundaries exact (the first step, the end of warm-up, the last step and
after it), and then `WarmupCosine`, a `torch.optim.lr_scheduler.LRScheduler` subclass that
drives an optimizer's param groups with the cosine schedule. The grader compares the
functions with a float64 formula at every step, and the scheduler with torch's own
`LambdaLR` running the same schedule, step for step, with two param groups and a run
resumed from a `state_dict`.

Run the grader:   make check topic=schedulers
Hints:            exercises/schedulers/README.md
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """The learning rate of step `step` (0-based) under linear warm-up, then cosine decay.

    With W = warmup_steps and T = total_steps:

        step < W:        base_lr * (step + 1) / W         (base_lr / W at step 0, base_lr at step W - 1)
        W <= step < T:   min_lr + (base_lr - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2
                                                          (base_lr at step W, falling towards min_lr)
        step >= T:       min_lr                           (and it stays there)

    Step 0 already trains at base_lr / W (a step at lr 0 would be wasted). W = 0 means no
    warm-up: step 0 is base_lr. W = T means warm-up only, then min_lr from step T on.

    Args:
        step: the number of optimizer steps taken before this one, an int >= 0.
        warmup_steps: W, an int with 0 <= W <= T.
        total_steps: T, an int >= 1: the step from which the rate is min_lr.
        base_lr: the peak rate, reached at the end of warm-up.
        min_lr: the floor the cosine decays to, an absolute rate (not a fraction of base_lr).

    Returns:
        A Python float (never a tensor).

    Raises:
        ValueError: warmup_steps < 0, total_steps < 1, or warmup_steps > total_steps.
    """
    raise NotImplementedError("schedulers.warmup_cosine")


def linear_warmup_decay(step: int, *, warmup_steps: int, total_steps: int, base_lr: float) -> float:
    """The learning rate of step `step` under linear warm-up, then linear decay to 0.

    With W = warmup_steps and T = total_steps:

        step < W:        base_lr * (step + 1) / W         (the same warm-up as warmup_cosine)
        W <= step < T:   base_lr * (T - step) / (T - W)   (base_lr at step W, base_lr / (T - W) at T - 1)
        step >= T:       0.0

    Args:
        step: an int >= 0.
        warmup_steps: W, an int with 0 <= W <= T.
        total_steps: T, an int >= 1.
        base_lr: the peak rate.

    Returns:
        A Python float.

    Raises:
        ValueError: warmup_steps < 0, total_steps < 1, or warmup_steps > total_steps.
    """
    raise NotImplementedError("schedulers.linear_warmup_decay")


def check_schedule(warmup_steps: int, total_steps: int) -> None:
    """Raise ValueError unless 0 <= warmup_steps <= total_steps and total_steps >= 1."""
    raise NotImplementedError("schedulers.check_schedule")


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """warmup_cosine as a torch learning-rate scheduler: after `n` calls of step(), each
    param group's lr is warmup_cosine(n, warmup_steps=W, total_steps=T,
    base_lr=<that group's base lr>, min_lr=min_lr).

    The same learning rates, step for step, as
    LambdaLR(optimizer, [lambda n, b=b: warmup_cosine(n, ..., base_lr=b, min_lr=min_lr) / b
    for b in base lrs]): right after construction every group's lr is its step-0 rate.

    Args:
        optimizer: the torch.optim.Optimizer whose param groups it drives; each group's lr
            when the scheduler is built is that group's base lr (self.base_lrs, as every
            LRScheduler records it: group["initial_lr"]).
        warmup_steps: W, 0 <= W <= T.
        total_steps: T >= 1.
        min_lr: the absolute floor, the same for every group.

    Raises:
        ValueError: as warmup_cosine, for W and T.

    Contract (what the grader relies on): a subclass of
    torch.optim.lr_scheduler.LRScheduler and of no other torch scheduler (not LambdaLR,
    CosineAnnealingLR, SequentialLR, ...), and it never creates or calls one. The rates
    come from the step count LRScheduler keeps (self.last_epoch, n after n calls of
    step()) and self.base_lrs, never from the groups' current lr (that would compound);
    get_last_lr() returns them. state_dict() and load_state_dict() save and restore
    everything a resumed run needs (the step count included) as plain data that
    torch.save and torch.load(weights_only=True) can carry: no lambdas or functions in
    self.__dict__. A run resumed from a checkpoint (a fresh optimizer and scheduler, the
    optimizer's state_dict loaded after building the scheduler, then the scheduler's)
    continues exactly as if never interrupted.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> None:
        raise NotImplementedError("schedulers.WarmupCosine.__init__")

    def get_lr(self) -> list[float]:
        """The lr of every param group for step self.last_epoch (closed form, from base_lrs)."""
        raise NotImplementedError("schedulers.WarmupCosine.get_lr")
