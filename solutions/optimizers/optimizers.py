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
        # BEGIN SOLUTION
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        # The defaults fill in whatever a param group leaves out; after this, every
        # hyperparameter is read from self.param_groups, never from an attribute.
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay, "nesterov": nesterov}
        super().__init__(params, defaults)
        # END SOLUTION

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
        # BEGIN SOLUTION
        loss = None
        if closure is not None:
            with torch.enable_grad():  # step runs under no_grad; the closure needs autograd
                loss = closure()
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if weight_decay != 0:
                    d_p = d_p + weight_decay * p  # a new tensor: p.grad stays as it was
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        # A copy: the buffer must not alias p.grad, which is zeroed in place.
                        buf = d_p.clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p + momentum * buf if nesterov else buf
                p.add_(d_p, alpha=-lr)
        return loss
        # END SOLUTION


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
        # BEGIN SOLUTION
        _check_adam_hyperparameters(lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        super().__init__(params, defaults)
        # END SOLUTION

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Adam update of every parameter that has a gradient; returns the closure's
        loss (the closure is called once, with grad enabled), or None."""
        # BEGIN SOLUTION
        return _adam_step(self, closure, decoupled=False)
        # END SOLUTION


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
        # BEGIN SOLUTION
        _check_adam_hyperparameters(lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        super().__init__(params, defaults)
        # END SOLUTION

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One AdamW update of every parameter that has a gradient; returns the closure's
        loss (the closure is called once, with grad enabled), or None."""
        # BEGIN SOLUTION
        return _adam_step(self, closure, decoupled=True)
        # END SOLUTION


def _check_adam_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Raise ValueError for what torch.optim.Adam refuses."""
    # BEGIN SOLUTION
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if eps < 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    # END SOLUTION


def _adam_step(optimizer: Optimizer, closure: Callable[[], Tensor] | None, *, decoupled: bool) -> Tensor | None:
    """The update shared by Adam (decoupled=False: L2 in the gradient) and AdamW
    (decoupled=True: p shrinks by lr * weight_decay first). Runs under no_grad (the
    callers' step is decorated); returns the closure's loss or None."""
    # BEGIN SOLUTION
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    for group in optimizer.param_groups:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = optimizer.state[p]
            if not state:
                # Per parameter, in self.state: saved by state_dict(), and a parameter
                # that skipped steps keeps its own count for the bias correction.
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(p)
            if weight_decay != 0:
                if decoupled:
                    p.mul_(1 - lr * weight_decay)  # AdamW: decay the weights, not the gradient
                else:
                    grad = grad + weight_decay * p  # Adam: L2, through the moments
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)  # m = beta1 * m + (1 - beta1) * g
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # The moments start at 0, so early on they are too small by (1 - beta ** t).
            bias_correction1 = 1 - beta1**t
            bias_correction2_sqrt = (1 - beta2**t) ** 0.5
            if amsgrad:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                second = state["max_exp_avg_sq"]
            else:
                second = exp_avg_sq
            denom = second.sqrt() / bias_correction2_sqrt + eps
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    return loss
    # END SOLUTION
