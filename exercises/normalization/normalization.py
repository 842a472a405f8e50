"""Normalisation from scratch: RMSNorm, LayerNorm and BatchNorm.

You rebuild what `torch.nn.functional.rms_norm`, `layer_norm` and `batch_norm` do, out of
reductions (mean, var) and elementwise ops. The grader compares your code with torch's own
ops on many shapes, magnitudes and dtypes, checks the gradients and BatchNorm's running
statistics over several training steps, forbids the fused norm kernels, and times your
code against the reference.

Run the grader:   make check topic=normalization
Hints:            exercises/normalization/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2 over the last dim) + eps) * weight.

    Args:
        x: (..., D) any number of leading dimensions.
        weight: None or (D,), multiplies the normalised x.
        eps: added to the mean square, inside the square root.

    Returns:
        (..., D) in x's dtype and on x's device. bfloat16 and float16 inputs are
        computed in float32 and the result converted back to x's dtype: every reduction
        (the mean of the squares) returns float32 and reads float32 values or x itself
        (mean(..., dtype=torch.float32)), never squares computed in half precision.

    Rules: no fused norm op (torch.nn.functional.rms_norm or any aten *_norm kernel,
    whatever name reaches it); inputs unmodified; no Python loop over rows, and the
    same work on every call (no random draws).
    """
    raise NotImplementedError("normalization.rms_norm")


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned per-feature scale.

    Args:
        dim: D, the size of the last dimension of the inputs.
        eps: added to the mean square inside the square root.

    Attributes:
        weight: nn.Parameter of shape (dim,), initialised to ones; the only parameter.
        eps: float.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        raise NotImplementedError("normalization.RMSNorm.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """rms_norm(x, self.weight, self.eps) for x of shape (..., dim)."""
        raise NotImplementedError("normalization.RMSNorm.forward")


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, over the last dim.

    The same as torch.nn.functional.layer_norm(x, (D,), weight, bias, eps): the
    variance is the biased one (divided by D, not D - 1).

    Args:
        x: (..., D).
        weight: None or (D,).
        bias: None or (D,).
        eps: added to the variance, inside the square root.

    Returns:
        (..., D) in x's dtype and on x's device; bfloat16 and float16 inputs are
        computed in float32, as in rms_norm: the mean and the variance come from
        reductions in float32.

    Rules: no fused norm op; inputs unmodified; no Python loop over rows, and the
    same work on every call.
    """
    raise NotImplementedError("normalization.layer_norm")


def batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation per channel, as torch.nn.functional.batch_norm.

    In training, each channel is normalised with the mean and biased variance of its
    values over the batch (and length) dimensions, and the running statistics are
    updated in place:
        running_mean <- (1 - momentum) * running_mean + momentum * batch mean
        running_var  <- (1 - momentum) * running_var  + momentum * unbiased batch variance
    In eval, x is normalised with running_mean and running_var, and nothing is modified.

    Args:
        x: (N, C) or (N, C, L).
        running_mean: (C,), updated in place in training.
        running_var: (C,), updated in place in training.
        weight: None or (C,).
        bias: None or (C,).
        training: use (and record) batch statistics, or use the running ones.
        momentum: weight of the new batch in the running statistics.
        eps: added to the variance, inside the square root.

    Returns:
        Same shape as x, in x's dtype; bfloat16 and float16 inputs are computed in
        float32, as in rms_norm: the batch statistics come from reductions in float32.

    Rules: no fused norm op; x, weight and bias unmodified (and the running statistics
    too, in eval); no Python loop over channels or the batch, and the same work on
    every call.
    """
    raise NotImplementedError("normalization.batch_norm")
