"""Gradient accumulation: one optimizer step over several micro-batches.

When a batch does not fit in memory, you run the model on it a piece (a micro-batch)
at a time, let the gradients add up in each parameter's `.grad`, and step once. Done
right, the step is exactly the one you would take on the whole batch at once, even
when the micro-batches hold different numbers of real (non-padding) targets. The grader
compares your parameters, gradients and losses with one full-batch step of torch's own
cross-entropy, clipping and optimizer, computed in float64, and watches how you run
the model (one micro-batch at a time, a backward after each).

Run the grader:   make check topic=grad_accumulation
Hints:            exercises/grad_accumulation/README.md
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def accumulate_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[Tensor, Tensor]],
    *,
    ignore_index: int = -100,
    max_grad_norm: float | None = None,
) -> float:
    """One optimizer step on the union of `micro_batches`, run one micro-batch at a time.

    The step must equal a single step on all micro-batches concatenated, with the
    cross-entropy averaged over every target that is not `ignore_index`, across all of
    them. Micro-batches may differ in size and in how many real targets they hold; one
    may hold none at all.

    Args:
        model: `model(inputs)` returns logits (..., C) for integer targets (...), with
            any number of leading dims: (N, C) for targets (N,), (B, T, C) for token
            targets (B, T), and so on.
        optimizer: a torch.optim optimizer over the model's parameters.
        micro_batches: a sequence of (inputs, targets) pairs. Together they hold at
            least one real target.
        ignore_index: targets equal to it are padding: they add nothing to the loss
            and are not counted in the mean.
        max_grad_norm: if given, clip the total gradient norm (over all parameters) to
            it once, after every micro-batch has been accumulated, before the step.

    Returns:
        The full-batch mean loss, as a Python float.

    Rules: clear stale gradients first; call `model(inputs)` once per micro-batch
    (never on their concatenation; one with no real target may be skipped) and run
    backward on it before the next call, so only one micro-batch's activations are alive
    at a time; call `optimizer.step()` exactly once. Afterwards each parameter's `.grad`
    holds the (clipped) full-batch gradient. Do not modify the micro-batch tensors.
    """
    raise NotImplementedError("grad_accumulation.accumulate_and_step")


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[tuple[Tensor, Tensor]],
    accumulation_steps: int,
    *,
    ignore_index: int = -100,
    max_grad_norm: float | None = None,
) -> list[float]:
    """One pass over `loader`, one optimizer step per `accumulation_steps` batches.

    Consecutive batches form a group; each group is one `accumulate_and_step` call with
    the group's batches as its micro-batches. The last group may hold fewer batches:
    it still takes its step.

    Args:
        model, optimizer, ignore_index, max_grad_norm: as in `accumulate_and_step`.
        loader: any iterable of (inputs, targets) pairs (a DataLoader, a list, a
            generator); it may be iterated only once.
        accumulation_steps: batches per optimizer step, >= 1.

    Returns:
        The full-batch mean loss of each step, in order (one float per step).
    """
    raise NotImplementedError("grad_accumulation.train_epoch")
