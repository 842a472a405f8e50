"""Dropout from scratch: inverted dropout, train and eval modes, reproducible masks.

You rebuild `torch.nn.functional.dropout` and `torch.nn.Dropout`: in training, each element
is zeroed with probability p and the survivors are scaled by 1 / (1 - p), so the expected
output equals the input; in eval, the input passes unchanged. The grader checks the kept
fraction and the mean within statistical bounds (each fails a correct implementation with
probability below 1e-6), the exact scale, p = 0 and p = 1, eval mode, the gradients, that
the same generator state gives the same mask, and forbids torch's dropout ops.

Run the grader:   make check topic=dropout
Hints:            exercises/dropout/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout, as torch.nn.functional.dropout(x, p, training) (no inplace argument).

    In training, every element of x is kept independently with probability 1 - p and
    multiplied by 1 / (1 - p), or set to 0 with probability p:
        out = x * mask / (1 - p),   mask ~ Bernoulli(1 - p), one draw per element
    so that E[out] = x. In eval (training=False), x passes unchanged.

    Args:
        x: any shape (empty included), floating dtype (float32, float64, bfloat16,
            float16), any device.
        p: the probability of dropping an element, 0 <= p <= 1; a p outside [0, 1]
            raises ValueError, in eval too. p = 0 keeps every element (out equals x
            exactly); p = 1 drops every element (out is all zeros, never nan).
        training: drop (True) or pass x through (False).
        generator: None, or a torch.Generator on x's device that every random number is
            drawn from (the same generator state gives the same mask). With None, torch's
            global generator is used, so torch.manual_seed makes the masks reproducible
            and successive calls draw fresh masks.

    Returns:
        x's shape, dtype and device. In eval: x itself (as torch returns it) or an equal
        copy. In training a new tensor; its gradient with respect to x is
        mask / (1 - p): masked and scaled exactly like the output.

    Rules: no dropout op of torch's (F.dropout, nn.Dropout, alpha/feature dropout, the
    aten dropout and native_dropout kernels, under any name: the rule is enforced at the
    aten level); torch.rand, torch.bernoulli and comparisons are yours. x is not
    modified.
    """
    raise NotImplementedError("dropout.dropout")


class Dropout(nn.Module):
    """Inverted dropout as a module, as torch.nn.Dropout(p) (no inplace argument).

    Args:
        p: the probability of dropping an element, 0 <= p <= 1; anything else raises
            ValueError when the module is built.

    Attributes:
        p: float, as given. No parameters and no buffers (state_dict() is empty).

    forward(x) is dropout(x, self.p, training=self.training), drawing from torch's global
    generator: it drops in train mode (the default, and after .train()) and passes x
    through after .eval().
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        raise NotImplementedError("dropout.Dropout.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """dropout(x, self.p, self.training) for x of any shape."""
        raise NotImplementedError("dropout.Dropout.forward")

    def extra_repr(self) -> str:
        return f"p={self.p}"
