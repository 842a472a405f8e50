"""Mistake: DynamicLossScaler is torch.amp.GradScaler under another name (a subclass), the class the kata rebuilds.

caught-by: test_scale_follows_grad_scaler, test_growth_tracker_follows_grad_scaler, test_overflowed_steps_are_skipped, test_clean_steps_are_taken, test_parameters_follow_grad_scaler, test_scale_multiplies_loss_by_float32_scale, test_second_unscale_raises, test_state_dict_matches_grad_scalers
hint: none
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DynamicLossScaler(torch.amp.GradScaler):  # MISTAKE: torch's own scaler, forbidden
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        super().__init__("cpu", init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor,
                         growth_interval=growth_interval)


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
    inputs, targets = batch
    optimizer.zero_grad()  # backward adds into .grad
    with torch.autocast(device_type=device_type, dtype=dtype):
        logits = model(inputs)  # (N, C) in dtype: the matmuls ran in half precision
        # Reductions in float32: a log-softmax over half-precision logits loses the
        # small probabilities.
        loss = F.cross_entropy(logits.float(), targets)
    scaler.scale(loss).backward()  # the gradients are scale times the true ones
    if max_grad_norm is not None:
        # Clip the true gradients: clipping scaled ones would clip to max_norm * scale.
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)  # unscales (unless done), skips on inf or nan
    scaler.update()
    return float(loss.detach())
