"""Autograd by hand: custom Functions, a hand-written MLP backward, gradient hooks.

autograd records every op of a forward pass and replays their derivatives backwards. Here
you do its job: two `torch.autograd.Function`s with hand-written backward passes
(a numerically stable Softplus, and a straight-through rounding whose gradient is
deliberately not round's), the whole backward pass of a two-layer tanh MLP with no
autograd at all, and a gradient hook that clips each backward's gradient. The grader
compares every gradient with torch's autograd in float64, runs torch.autograd.gradcheck
on your Functions where your code runs, and watches what they save and what your hook
touches.

Run the grader:   make check topic=autograd
Hints:            exercises/autograd/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle


class Softplus(torch.autograd.Function):
    """softplus(x) = log(1 + exp(beta * x)) / beta, with a hand-written backward.

    Called as `Softplus.apply(x, beta)`.

    forward(ctx, x, beta):
        x: a floating tensor of any shape (float32 or float64), on any device.
        beta: a positive Python float.
        Returns a tensor of x's shape, dtype and device, finite and accurate for every
        finite x, however large |beta * x| is: exp(beta * x) overflows float32 above
        beta * x = 88, so the formula above cannot be computed as written. (torch's
        F.softplus switches to x itself above a threshold; this one has no threshold
        argument and is exact everywhere.) Whatever backward needs from x is saved
        with ctx.save_for_backward, never as an attribute of ctx.

    backward(ctx, grad_output):
        Returns (grad_output * d softplus / dx, None): the derivative is
        sigmoid(beta * x), and beta, a Python float, gets None.

    Rules: no torch softplus (F.softplus, nn.Softplus, the aten softplus kernels and
    their backward, by any name); inputs unmodified.
    """

    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:
        # BEGIN SOLUTION
        z = beta * x
        # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|): the exponent is never positive, so
        # nothing overflows, and log1p keeps the digits of a tiny e^-|z|.
        out = (torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))) / beta
        # save_for_backward, not ctx.x = x: autograd then checks that x was not modified
        # in place before backward, and saved-tensor hooks (offloading, checkpointing) see it.
        ctx.save_for_backward(x)
        ctx.beta = beta  # a Python number: an attribute is the place for it
        return out
        # END SOLUTION

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        # BEGIN SOLUTION
        (x,) = ctx.saved_tensors
        # d/dx log(1 + e^(beta x)) / beta = e^(beta x) / (1 + e^(beta x)) = sigmoid(beta x):
        # the 1/beta and the chain rule's beta cancel. torch.sigmoid is stable at both ends.
        # One gradient per forward input: None for beta, which is not a tensor.
        return grad_output * torch.sigmoid(ctx.beta * x), None
        # END SOLUTION


class StraightThroughRound(torch.autograd.Function):
    """round(x) forward, identity backward: the straight-through estimator.

    Called as `StraightThroughRound.apply(x)`. Rounding's true derivative is 0 almost
    everywhere, which would stop all learning through it (quantisation-aware training,
    vector quantisation); the straight-through estimator passes the gradient on as if
    the forward were the identity.

    forward(ctx, x):
        x: a floating tensor of any shape, dtype and device.
        Returns torch.round(x) as a new tensor (halves round to even, as torch.round
        does: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2), in x's dtype; x is not modified.

    backward(ctx, grad_output):
        Returns grad_output unchanged (the identity's vector-Jacobian product).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        return torch.round(x)  # a new tensor; nothing to save: the backward needs nothing
        # END SOLUTION

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        # BEGIN SOLUTION
        return grad_output
        # END SOLUTION


def mlp_backward(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Every gradient of a two-layer tanh MLP, by hand.

    The forward pass is y = tanh(x @ w1.T + b1) @ w2.T + b2 (nn.Linear's convention:
    weights are (out_features, in_features)); grad_out is dL/dy for some loss L.

    Args:
        x: (N, D_in).
        w1: (H, D_in), b1: (H,).
        w2: (D_out, H), b2: (D_out,).
        grad_out: (N, D_out), dL/dy.
        All of one floating dtype and device; none requires grad.

    Returns:
        (grad_x, grad_w1, grad_b1, grad_w2, grad_b2): dL/d of each input, each of that
        input's shape, dtype and device. A bias is added to every row, so its gradient
        sums over the batch.

    Rules: no autograd inside: no backward(), torch.autograd.grad or torch.func, and no
    tensor that requires grad (the grader checks that no op builds a graph); no aten
    tanh_backward kernel (write tanh's derivative yourself); no Python loop over the
    batch; inputs unmodified.
    """
    # BEGIN SOLUTION
    # The forward again, keeping what the backward needs: the hidden activations.
    h = torch.tanh(x @ w1.T + b1)  # (N, H)
    # Layer 2, y = h @ w2.T + b2: each weight's gradient pairs its input with the
    # gradient of its output; the bias gradient sums over the rows it was added to.
    grad_w2 = grad_out.T @ h  # (D_out, N) @ (N, H) -> (D_out, H)
    grad_b2 = grad_out.sum(dim=0)  # (D_out,)
    grad_h = grad_out @ w2  # (N, H)
    # tanh' = 1 - tanh^2, from the activations themselves: no second tanh.
    grad_pre = grad_h * (1 - h * h)  # (N, H), dL/d(x @ w1.T + b1)
    grad_w1 = grad_pre.T @ x  # (H, D_in)
    grad_b1 = grad_pre.sum(dim=0)  # (H,)
    grad_x = grad_pre @ w1  # (N, D_in)
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2
    # END SOLUTION


def clip_grad_hook(parameter: Tensor, max_abs: float) -> RemovableHandle:
    """Clip every gradient that reaches `parameter` to [-max_abs, max_abs], elementwise.

    Registers a hook on the tensor (Tensor.register_hook), so the clipping applies to
    each backward pass's gradient before it is accumulated into parameter.grad: after two
    backward passes, parameter.grad is clip(g1) + clip(g2), not clip(g1 + g2).

    Args:
        parameter: a leaf tensor that requires grad (an nn.Parameter), any shape.
        max_abs: a positive float.

    Returns:
        The torch.utils.hooks.RemovableHandle of the registration: handle.remove()
        stops the clipping.

    The hook returns a new, clipped gradient; it never modifies the gradient it is given
    in place (that tensor may be shared with other parts of the graph), nor
    parameter.grad.
    """
    # BEGIN SOLUTION
    def clip(grad: Tensor) -> Tensor:
        # Returning a tensor replaces the gradient; clamp (not clamp_) leaves autograd's
        # own tensor alone.
        return grad.clamp(-max_abs, max_abs)

    return parameter.register_hook(clip)
    # END SOLUTION
