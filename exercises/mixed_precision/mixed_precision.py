"""Mixed precision: autocast, and a dynamic loss scaler of your own.

Half-precision training runs the matmuls in bfloat16 or float16 under `torch.autocast`
and keeps the weights, the loss and the reductions in float32. float16 has so little range
that small gradients underflow to 0, so the loss is multiplied by a large scale before
backward and the gradients divided by it again before the step; when a gradient
overflows to inf or nan, the step is skipped and the scale backed off. You write that
scaler, `DynamicLossScaler`, which must match `torch.amp.GradScaler` step for step (its
scale, its growth tracker and which steps it skips, over runs with injected infinities),
and one training step, `amp_train_step`, that uses a scaler the right way round: autocast
forward, scaled backward, unscale before clipping, step, update.

Run the grader:   make check topic=mixed_precision
Hints:            exercises/mixed_precision/README.md
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DynamicLossScaler:
    """Dynamic loss scaling with torch.amp.GradScaler's semantics (enabled, one device).

    The scale starts at `init_scale`. Every iteration is: `scaler.scale(loss).backward()`,
    optionally `scaler.unscale_(optimizer)` (to clip or inspect the true gradients), then
    `scaler.step(optimizer)`, then `scaler.update()`. After an iteration whose gradients
    held an inf or a nan, update() multiplies the scale by `backoff_factor` and resets the
    growth tracker to 0; after a clean one it adds 1 to the tracker, and when the tracker
    reaches `growth_interval` the scale is multiplied by `growth_factor` and the tracker
    reset to 0.

    Args:
        init_scale: the first scale, > 0.
        growth_factor: > 1, applied after `growth_interval` clean iterations in a row.
        backoff_factor: in (0, 1), applied after an iteration with an inf or nan gradient.
        growth_interval: clean iterations in a row before the scale grows, >= 1.

    The scale is kept as a 0-dim float32 tensor, as torch's is: each growth or backoff
    multiplies it in float64 and rounds the product once to float32, as GradScaler's
    kernel does (the grader compares the scale with torch's exactly, with factors such as
    3.0 and 0.3). It may live on the CPU or on the loss's device.

    Rules: no torch.amp.GradScaler (nor its torch.cuda.amp / torch.cpu.amp forms, nor a
    subclass of it): a profile hook catches any call into torch/amp/grad_scaler.py; no
    torch._amp_foreach_non_finite_check_and_unscale_ or torch._amp_update_scale_ (the
    fused kernels GradScaler uses).
    """

    def __init__(
        self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000
    ) -> None:
        raise NotImplementedError("mixed_precision.DynamicLossScaler.__init__")

    def scale(self, loss: Tensor) -> Tensor:
        """loss multiplied by the current scale.

        Args:
            loss: a float32 tensor (usually 0-dim) with autograd history.

        Returns:
            loss * scale: same shape, float32, on loss's device, with autograd history
            (backward through it gives scale times the true gradients). `loss` itself is
            not modified.
        """
        raise NotImplementedError("mixed_precision.DynamicLossScaler.scale")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide, in place, every gradient of every parameter of every param group of
        `optimizer` by the current scale, and record whether any of them holds an inf or a
        nan (parameters whose .grad is None are skipped).

        Raises:
            RuntimeError: if unscale_ was already called for this optimizer since the last
                update() (a second division would corrupt the gradients), or if step() was
                already called for it since the last update().
        """
        raise NotImplementedError("mixed_precision.DynamicLossScaler.unscale_")

    def step(self, optimizer: torch.optim.Optimizer):
        """unscale_(optimizer) unless it was called this iteration, then optimizer.step()
        unless a gradient held an inf or a nan.

        Returns:
            What optimizer.step() returned, or None when the step was skipped.

        Raises:
            RuntimeError: if step() was already called for this optimizer since the last update().
        """
        raise NotImplementedError("mixed_precision.DynamicLossScaler.step")

    def update(self) -> None:
        """Back the scale off after an iteration with an inf or nan gradient, else count a
        clean iteration and grow the scale after `growth_interval` of them; then start a
        new iteration (unscale_ and step may be called again). Called once per iteration,
        after step()."""
        raise NotImplementedError("mixed_precision.DynamicLossScaler.update")

    def state_dict(self) -> dict:
        """The scaler's state, with GradScaler.state_dict()'s keys and types.

        Returns:
            {"scale": float, "growth_factor": float, "backoff_factor": float,
            "growth_interval": int, "_growth_tracker": int}: plain Python numbers.
        """
        raise NotImplementedError("mixed_precision.DynamicLossScaler.state_dict")


def amp_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    batch: tuple[Tensor, Tensor],
    *,
    device_type: str,
    dtype: torch.dtype,
    max_grad_norm: float | None = None,
) -> float:
    """One mixed-precision training step.

    In this order: clear the gradients (`optimizer.zero_grad()`); under
    `torch.autocast(device_type, dtype=dtype)`, logits = model(inputs); the loss,
    F.cross_entropy over the logits converted to float32, in float32; backward of
    `scaler.scale(loss)`; if `max_grad_norm` is given, `scaler.unscale_(optimizer)` and
    then `torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)` (allowed
    here), so that the true gradients are clipped, not the scaled ones;
    `scaler.step(optimizer)` (which skips the step on an inf or nan gradient);
    `scaler.update()`.

    Args:
        model: float32 weights; maps inputs (N, F) float32 to logits (N, C).
        optimizer: a torch.optim optimizer over the model's parameters; gradients left in
            .grad on entry are stale.
        scaler: a DynamicLossScaler, or anything with the same methods (the grader passes
            torch.amp.GradScaler itself, wrapped).
        batch: (inputs (N, F) float32, targets (N,) int64 class indices).
        device_type: "cpu" or "cuda", the device of the model and batch.
        dtype: the autocast dtype: torch.bfloat16 on the CPU, torch.float16 on CUDA.
        max_grad_norm: if given, the total gradient norm is clipped to it.

    Returns:
        The float32 loss (unscaled), as a Python float.

    Rules: call `model(inputs)` once, under autocast; the loss's log-softmax and mean run
    in float32; the batch tensors are not modified.
    """
    raise NotImplementedError("mixed_precision.amp_train_step")
