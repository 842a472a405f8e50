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
        # BEGIN SOLUTION
        self._scale = torch.tensor(float(init_scale), dtype=torch.float32)  # float32, as GradScaler's
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0  # clean iterations in a row since the last growth or backoff
        # This iteration's bookkeeping, cleared by update():
        self._unscaled: set[int] = set()  # ids of the optimizers unscaled this iteration
        self._stepped: set[int] = set()
        self._found_inf = False
        self._checked = False  # whether any gradients were checked this iteration
        # END SOLUTION

    def scale(self, loss: Tensor) -> Tensor:
        """loss multiplied by the current scale.

        Args:
            loss: a float32 tensor (usually 0-dim) with autograd history.

        Returns:
            loss * scale: same shape, float32, on loss's device, with autograd history
            (backward through it gives scale times the true gradients). `loss` itself is
            not modified.
        """
        # BEGIN SOLUTION
        self._scale = self._scale.to(loss.device)
        return loss * self._scale
        # END SOLUTION

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide, in place, every gradient of every parameter of every param group of
        `optimizer` by the current scale, and record whether any of them holds an inf or a
        nan (parameters whose .grad is None are skipped).

        Raises:
            RuntimeError: if unscale_ was already called for this optimizer since the last
                update() (a second division would corrupt the gradients), or if step() was
                already called for it since the last update().
        """
        # BEGIN SOLUTION
        key = id(optimizer)
        if key in self._unscaled:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if key in self._stepped:
            raise RuntimeError("unscale_() is being called after step().")
        # GradScaler multiplies by a float32 reciprocal computed in float64.
        inv_scale = self._scale.double().reciprocal().float()
        found = False
        with torch.no_grad():
            for group in optimizer.param_groups:  # every group, every parameter
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    # Checked on the scaled gradient: inf stays inf and nan stays nan anyway.
                    found = found or not bool(torch.isfinite(p.grad).all())
                    p.grad.mul_(inv_scale.to(p.grad.device))
        self._found_inf = self._found_inf or found
        self._checked = True
        self._unscaled.add(key)
        # END SOLUTION

    def step(self, optimizer: torch.optim.Optimizer):
        """unscale_(optimizer) unless it was called this iteration, then optimizer.step()
        unless a gradient held an inf or a nan.

        Returns:
            What optimizer.step() returned, or None when the step was skipped.

        Raises:
            RuntimeError: if step() was already called for this optimizer since the last update().
        """
        # BEGIN SOLUTION
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError("step() has already been called since the last update().")
        if key not in self._unscaled:
            self.unscale_(optimizer)
        self._stepped.add(key)
        if self._found_inf:
            return None  # an overflowed gradient would write inf or nan into the weights
        return optimizer.step()
        # END SOLUTION

    def update(self) -> None:
        """Back the scale off after an iteration with an inf or nan gradient, else count a
        clean iteration and grow the scale after `growth_interval` of them; then start a
        new iteration (unscale_ and step may be called again). Called once per iteration,
        after step()."""
        # BEGIN SOLUTION
        if not self._checked:
            raise RuntimeError("update() was called before any step() or unscale_() of this iteration.")
        if self._found_inf:
            # As torch's kernel: the product in float64, rounded once to float32.
            self._scale = (self._scale.double() * self._backoff_factor).float()
            self._growth_tracker = 0  # the clean run starts over
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self._growth_interval:
                grown = (self._scale.double() * self._growth_factor).float()
                if bool(torch.isfinite(grown)):  # as torch: never grow to inf
                    self._scale = grown
                self._growth_tracker = 0
        self._unscaled, self._stepped, self._found_inf, self._checked = set(), set(), False, False
        # END SOLUTION

    def state_dict(self) -> dict:
        """The scaler's state, with GradScaler.state_dict()'s keys and types.

        Returns:
            {"scale": float, "growth_factor": float, "backoff_factor": float,
            "growth_interval": int, "_growth_tracker": int}: plain Python numbers.
        """
        # BEGIN SOLUTION
        return {
            "scale": float(self._scale),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": int(self._growth_tracker),
        }
        # END SOLUTION


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
    # BEGIN SOLUTION
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
    # END SOLUTION
