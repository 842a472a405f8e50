"""Variant: the textbook forms. SGD's momentum buffer is rebuilt functionally each step
(buf = momentum * buf + (1 - dampening) * g, stored back in the state); Adam's update is
lr * m_hat / (sqrt(v_hat) + eps) with m_hat, v_hat the bias-corrected moments, the step
count a float tensor as torch keeps it, and amsgrad's maximum updated with torch.max; AdamW
subclasses this Adam (allowed: it is not a torch.optim optimizer).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class SGD(Optimizer):
    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov))

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
                    m = group["momentum"]
                    if m:
                        state = self.state[p]
                        if "momentum_buffer" in state:
                            buf = m * state["momentum_buffer"] + (1 - group["dampening"]) * g
                        else:
                            buf = g.detach().clone()
                        state["momentum_buffer"] = buf
                        g = g + m * buf if group["nesterov"] else buf
                    p.sub_(group["lr"] * g)
        return loss


class Adam(Optimizer):
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("invalid Adam hyperparameters")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and self.decoupled:
                    p.mul_(1 - lr * wd)
                elif wd:
                    g = g + wd * p
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["v_max"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                state["m"].mul_(b1).add_((1 - b1) * g)
                state["v"].mul_(b2).add_((1 - b2) * g * g)
                v = state["v"]
                if group["amsgrad"]:
                    state["v_max"] = torch.max(state["v_max"], v)
                    v = state["v_max"]
                m_hat = state["m"] / (1 - b1**t)
                v_hat = v / (1 - b2**t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + group["eps"]))
        return loss


class AdamW(Adam):
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
