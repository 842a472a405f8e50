"""Optimizers from scratch: SGD (momentum, Nesterov), Adam and AdamW as torch optimizers.

You write three subclasses of `torch.optim.Optimizer` that follow torch.optim.SGD, Adam
and AdamW step for step: hyperparameters in param groups (so schedulers can change the
learning rate), per-parameter state in `self.state[p]` (so `state_dict()` and
`load_state_dict()` save and resume a run exactly), parameters without a gradient
skipped. The grader runs 100 steps of a small model against torch's own optimizers in
float64, with every option, two param groups, missing gradients, a resume from a
checkpoint and a learning rate changed mid-run.

Run the grader:   make check topic=optimizers
Hints:            exercises/optimizers/README.md
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov
    momentum, as torch.optim.SGD. For each parameter p with a gradient g, in its group:

        g = g + weight_decay * p                       (if weight_decay != 0)
        if momentum != 0:
            buf = g (a copy) on p's first step with momentum, else
            buf = momentum * buf + (1 - dampening) * g
            g = g + momentum * buf  if nesterov  else  buf
        p = p - lr * g

    Args:
        params: an iterable of tensors, or of dicts (param groups: "params" and any
            hyperparameter below, overriding the defaults for that group).
        lr: the learning rate, >= 0 (required).
        momentum: >= 0.
        dampening: in the momentum update; nesterov needs it 0.
        weight_decay: L2 penalty, >= 0, added to the gradient.
        nesterov: Nesterov momentum; needs momentum > 0 and dampening == 0.

    Raises:
        ValueError: lr, momentum or weight_decay < 0, or nesterov without momentum
            (or with dampening), as torch does.

    Contract (what the grader relies on): a subclass of torch.optim.Optimizer and of no
    other torch.optim class (not torch.optim.SGD). Every group holds its hyperparameters
    under the names above ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    and step() reads them from the group on every call (a scheduler changes
    group["lr"]). The momentum buffer lives in self.state[p]["momentum_buffer"], so
    state_dict() / load_state_dict() resume a run exactly. Parameters whose .grad is None
    are skipped (no update, no state change). step() updates parameters in place under
    torch.no_grad(), never modifies p.grad, and never calls torch.optim's own step
    functions (torch.optim.sgd.sgd, _single_tensor_sgd, ...).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        raise NotImplementedError("optimizers.SGD.__init__")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient.

        Args:
            closure: None, or a function that clears the gradients, recomputes the loss,
                calls backward() and returns the loss; called once, with grad enabled,
                before the update.

        Returns:
            The closure's loss, or None without a closure.
        """
        raise NotImplementedError("optimizers.SGD.step")


class Adam(Optimizer):
    """Adam, as torch.optim.Adam (weight decay as an L2 term in the gradient). For each
    parameter p with a gradient g, in its group, with t its own step count (1 on its
    first update):

        g = g + weight_decay * p                           (if weight_decay != 0)
        m = beta1 * m + (1 - beta1) * g                    (m, v start at zeros)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                              (amsgrad only; v_max starts at 0)
        denom = sqrt(v_max if amsgrad else v) / sqrt(1 - beta2 ** t) + eps
        p = p - lr / (1 - beta1 ** t) * m / denom

    eps is added after the bias correction of sqrt(v), as torch does.

    Args:
        params: an iterable of tensors or of param-group dicts.
        lr: >= 0.
        betas: (beta1, beta2), each in [0, 1).
        eps: >= 0.
        weight_decay: >= 0, added to the gradient (L2 regularisation, not AdamW's decay).
        amsgrad: keep the running maximum of v and divide by it.

    Raises:
        ValueError: lr, eps or weight_decay < 0, or a beta outside [0, 1).

    Contract: a subclass of torch.optim.Optimizer only (not of torch.optim.Adam). Every
    group holds "lr", "betas", "eps", "weight_decay", "amsgrad", read on every step. Each
    parameter's state lives in self.state[p] (its step count and both moments, and v_max
    with amsgrad), so state_dict() / load_state_dict() resume a run exactly, and a
    parameter skipped on some steps (.grad None: no update, no state change) keeps its own
    step count. In place, under no_grad; p.grad unmodified; no torch.optim step functions.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        raise NotImplementedError("optimizers.Adam.__init__")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Adam update of every parameter that has a gradient; returns the closure's
        loss (the closure is called once, with grad enabled), or None."""
        raise NotImplementedError("optimizers.Adam.step")


class AdamW(Optimizer):
    """AdamW, as torch.optim.AdamW: Adam whose weight decay is decoupled from the
    gradient. For each parameter p with a gradient g, before Adam's update:

        p = p * (1 - lr * weight_decay)

    and then exactly Adam's update above with g itself (weight decay never enters g, m or v).

    Args:
        params, lr, betas, eps, amsgrad: as Adam.
        weight_decay: >= 0, the decoupled decay rate (default 1e-2).

    Raises:
        ValueError: as Adam.

    Contract: as Adam: a subclass of torch.optim.Optimizer and of no torch.optim
    optimizer (subclassing your own Adam is fine); group keys "lr", "betas", "eps",
    "weight_decay", "amsgrad"; state in self.state[p]; a parameter whose .grad is None
    is skipped entirely, its decay included.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        raise NotImplementedError("optimizers.AdamW.__init__")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One AdamW update of every parameter that has a gradient; returns the closure's
        loss (the closure is called once, with grad enabled), or None."""
        raise NotImplementedError("optimizers.AdamW.step")


def _check_adam_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Raise ValueError for what torch.optim.Adam refuses."""
    raise NotImplementedError("optimizers._check_adam_hyperparameters")


def _adam_step(optimizer: Optimizer, closure: Callable[[], Tensor] | None, *, decoupled: bool) -> Tensor | None:
    """The update shared by Adam (decoupled=False: L2 in the gradient) and AdamW
    (decoupled=True: p shrinks by lr * weight_decay first). Runs under no_grad (the
    callers' step is decorated); returns the closure's loss or None."""
    raise NotImplementedError("optimizers._adam_step")
