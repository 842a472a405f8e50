"""nn.Module from scratch: parameters, buffers, ModuleList and state_dict.

You write a Linear layer whose weight and bias are registered Parameters initialised as
nn.Linear's, an MLP that keeps its layers in an nn.ModuleList, a RunningMean whose
statistics live in persistent buffers, and count_parameters. The grader checks what
`parameters()`, `buffers()` and `state_dict()` see, the initialisation statistically, the
values and gradients against torch (F.linear in float64), `.to()` moving and casting the
buffers, and a state_dict round trip into a fresh module.

Run the grader:   make check topic=modules
Hints:            exercises/modules/README.md
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class Linear(nn.Module):
    """y = x @ weight^T + bias, the same layer as torch.nn.Linear.

    Args:
        in_features: D_in, the size of the last dimension of the inputs.
        out_features: D_out, the size of the last dimension of the outputs.
        bias: whether the layer has a bias.

    Attributes:
        in_features, out_features: the two ints given.
        weight: nn.Parameter of shape (D_out, D_in), float32 on the CPU, trainable.
        bias: nn.Parameter of shape (D_out,) when bias=True; None when bias=False (registered
            as None, as nn.Linear does: `self.bias is None`, and no bias parameter exists).
        Exactly these parameters (registered in any order): named_parameters() and
        state_dict() give "weight" and "bias" and nothing else, so nn.Linear's state_dict
        loads into this layer and back.

    Initialisation (as nn.Linear): every entry of weight and bias is drawn independently from
    the uniform distribution on [-1/sqrt(D_in), 1/sqrt(D_in)], using torch's global random
    generator, so that after torch.manual_seed(s) a construction is reproducible and two
    layers built one after the other get different values. The order of the draws is yours.

    Rules: no torch.nn.functional.linear and no aten linear op (whatever name reaches it);
    forward modifies neither x nor the parameters.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        raise NotImplementedError("modules.Linear.__init__")

    def reset_parameters(self) -> None:
        """Draw weight and bias from U(-1/sqrt(D_in), 1/sqrt(D_in)), in place."""
        raise NotImplementedError("modules.Linear.reset_parameters")

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: (..., D_in), any number of leading dims, in the parameters' dtype and device.

        Returns:
            (..., D_out), x @ weight^T + bias, in x's dtype and on x's device; differentiable
            with respect to x, weight and bias.
        """
        raise NotImplementedError("modules.Linear.forward")


class MLP(nn.Module):
    """A stack of the Linear layers above with an activation between consecutive layers.

    Args:
        sizes: [D_0, D_1, ..., D_n] with n >= 1: layer i maps D_i features to D_(i+1).
            Fewer than two sizes raise ValueError.
        activation: a callable that makes an activation module (a class such as nn.ReLU,
            nn.Tanh or nn.PReLU), called once per hidden layer: n - 1 separate instances,
            so an activation with parameters (nn.PReLU) has its own per hidden layer.

    Attributes:
        layers: nn.ModuleList of the n Linear layers (this file's Linear, with bias), in order.
        activations: nn.ModuleList of the n - 1 activation modules, in order.
        state_dict() keys are therefore "layers.{i}.weight", "layers.{i}.bias" and, for an
        activation with parameters, "activations.{i}.<name>".

    forward(x): x of shape (..., D_0) goes through layer 0, activation 0, layer 1, ...,
    activation n - 2, layer n - 1: no activation after the last layer (its outputs are
    logits or regression values). Returns (..., D_n) in x's dtype.

    Rules: no torch.nn.functional.linear or aten linear op (use your Linear); forward
    modifies neither x nor any parameter.
    """

    def __init__(self, sizes: Sequence[int], activation: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        raise NotImplementedError("modules.MLP.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """(..., D_0) -> (..., D_n)."""
        raise NotImplementedError("modules.MLP.forward")


class RunningMean(nn.Module):
    """Centres its inputs with the mean of every input row it has seen in training.

    Args:
        dim: D, the size of the last dimension of the inputs.

    Buffers (registered with register_buffer, persistent: in state_dict(), moved and cast
    by .to(), never in parameters()):
        mean: (D,) float32, starts as zeros: the mean of all the rows seen so far.
        count: a 0-d int64 tensor, starts as 0: how many rows have been seen. It stays int64
            under .to(torch.float64) (Module.to casts only floating-point tensors).
        state_dict() keys: exactly "mean" and "count". A fresh RunningMean(D) that loads
        another's state_dict continues exactly where that one left off.

    forward(x): x of shape (..., D), in mean's dtype and on its device. Every leading index
    is one row: x holds N = x.numel() // D rows.
        - training mode (the default, module.train()): first update the buffers in place so
          that mean is the mean of all count + N rows seen (count += N), then return
          x - mean with the updated mean.
        - eval mode (module.eval()): return x - mean, changing nothing.
    The output is (..., D) in x's dtype. The buffers never require grad and are never part
    of an autograd graph: the gradient of the output with respect to x is the identity.

    Rules: x is never modified; in eval nothing is; no Python loop over rows.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        raise NotImplementedError("modules.RunningMean.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D), x minus the running mean (updated first in training)."""
        raise NotImplementedError("modules.RunningMean.forward")


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """How many numbers the module's parameters hold.

    Args:
        module: any nn.Module.
        trainable_only: count only the parameters with requires_grad=True; else all of them.

    Returns:
        A Python int: the sum of numel() over the module's distinct parameters, recursively
        through its submodules. A Parameter shared by two submodules (tied weights) is
        counted once; buffers are not parameters and are never counted.
    """
    raise NotImplementedError("modules.count_parameters")
