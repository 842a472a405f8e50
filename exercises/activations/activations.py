"""Activation functions from scratch: ReLU, GELU, SiLU, softplus, softmax and log-softmax.

You rebuild `torch.nn.functional.relu`, `gelu` (exact and tanh forms), `silu`, `softplus`,
`softmax` and `log_softmax`, argument for argument, out of elementwise ops (`torch.where`,
`torch.erf`, `torch.tanh`, `torch.sigmoid`, `torch.exp`, `torch.log1p`) and reductions
(`amax`, `sum`). The grader compares values and gradients with torch's in float64, at
ordinary inputs, at +-1000 (where naive formulas give inf or nan), at infinities and exact
zeros, in bfloat16 and float16, and forbids the fused activation kernels (and logsumexp:
the max-subtraction that makes a softmax stable is the lesson).

Run the grader:   make check topic=activations
Hints:            exercises/activations/README.md
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for bfloat16 and float16 (as torch's kernels compute them), else x's dtype."""
    return torch.promote_types(x.dtype, torch.float32)


def relu(x: Tensor) -> Tensor:
    """max(x, 0) elementwise, as torch.nn.functional.relu(x).

    Args:
        x: any shape (empty included), floating dtype (float32, float64, bfloat16, float16),
            any device; may be non-contiguous and may hold +-inf.

    Returns:
        A new tensor of x's shape, dtype and device: relu(-inf) = 0, relu(inf) = inf.
        Its gradient is 1 where x > 0 and 0 elsewhere, 0 at x == 0 exactly (torch's
        choice of subgradient there).

    Rules: no relu or any other fused activation op (nothing whose name contains elu,
    threshold or hardtanh, under any alias: the rule is enforced at the aten level);
    torch.where, torch.clamp and comparisons are yours. x is not modified: there is no
    inplace argument.
    """
    raise NotImplementedError("activations.relu")


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """The Gaussian error linear unit, as torch.nn.functional.gelu(x, approximate=...).

    approximate="none" (exact):  x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
    approximate="tanh":          0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))

    Args:
        x: any shape, floating dtype, any device; finite values of any size (+-1000
            included).
        approximate: "none" or "tanh"; anything else raises ValueError.

    Returns:
        x's shape, dtype and device, finite wherever x is. bfloat16 and float16 inputs are
        computed in float32 and the result converted back to x's dtype (as torch does).

    Rules: no gelu (nor any fused activation op) under any name; torch.erf, torch.tanh,
    torch.sigmoid and torch.special.ndtr are yours. x is not modified.
    """
    raise NotImplementedError("activations.gelu")


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (also called swish), as torch.nn.functional.silu(x).

    Args:
        x: any shape, floating dtype, any device; finite values of any size.

    Returns:
        x's shape, dtype and device; half precision computed in float32 and converted
        back. Finite, with a finite gradient, at +-1000: sigmoid built as
        1 / (1 + exp(-x)) has a nan gradient at x = -1000 (exp(1000) is inf).

    Rules: no silu (nor any fused activation op) under any name; torch.sigmoid is yours.
    x is not modified.
    """
    raise NotImplementedError("activations.silu")


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """A smooth relu, as torch.nn.functional.softplus(x, beta, threshold).

        softplus(x) = log(1 + exp(beta * x)) / beta     where beta * x <= threshold
                    = x                                  where beta * x >  threshold

    The switch to the identity is torch's rule, exactly: with threshold=1, softplus(2) is 2
    (not log(1 + e^2) = 2.127).

    Args:
        x: any shape, floating dtype, any device; may hold +-inf and values of any size.
        beta: > 0.
        threshold: compared with beta * x (not with x).

    Returns:
        x's shape, dtype and device; half precision computed in float32 and converted back
        (float16's exp overflows above 11). Finite for finite x, with a finite gradient:
        the unused branch of a torch.where still has its gradient computed, so exp(beta * x)
        must never overflow, even where it is not used. The gradient is torch's everywhere,
        ties included: sigmoid(beta * x) up to and at beta * x == threshold (0.5 at x == 0),
        1 above.

    Rules: no softplus, log_sigmoid, logsumexp or logaddexp (nor any fused activation op)
    under any name; torch.exp, torch.log1p and torch.where are yours. x is not modified.
    """
    raise NotImplementedError("activations.softplus")


def softmax(x: Tensor, dim: int, *, dtype: torch.dtype | None = None) -> Tensor:
    """exp(x) / sum(exp(x)) along dim, computed stably, as torch.nn.functional.softmax.

    Args:
        x: any shape with at least one dimension, floating dtype, any device; may hold
            -inf (masked entries, which get probability 0) and logits of any size (x * 1000
            included). x.shape[dim] >= 1; other dims may be 0 (an empty batch).
        dim: the dimension to normalise over, negative allowed. Required: torch's implicit
            choice when dim is None is deprecated, so this kata has none.
        dtype: keyword-only. None, or the dtype x is converted to *before* anything is
            computed (as torch's dtype=): softmax(bf16_x, -1, dtype=torch.float32) is
            computed and returned in float32, with float32's accuracy.

    Returns:
        x's shape and device; dtype if given, else x's dtype (bfloat16 and float16 are
        computed in float32 and converted back). No inf or nan for finite x: subtract the
        max along dim before exp.

    Rules: no softmax, log_softmax or logsumexp (torch's, under any name: the rule is
    enforced at the aten level); amax, max, exp, sum are yours. x is not modified.
    """
    raise NotImplementedError("activations.softmax")


def log_softmax(x: Tensor, dim: int, *, dtype: torch.dtype | None = None) -> Tensor:
    """log(softmax(x)) along dim, computed stably, as torch.nn.functional.log_softmax.

        log_softmax(x) = (x - m) - log(sum(exp(x - m)))     with m = max(x) along dim

    Args:
        x, dim, dtype: as in softmax.

    Returns:
        x's shape and device; dtype if given, else x's dtype (half computed in float32).
        Finite for finite x, however unlikely a class: log(softmax(x)) gives -inf where a
        probability underflows to 0 (x * 1000), and exp(x) overflows without the shift.

    Rules: as in softmax (no softmax, log_softmax or logsumexp under any name); your own
    softmax is not needed. x is not modified.
    """
    raise NotImplementedError("activations.log_softmax")
