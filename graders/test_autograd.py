"""Grader for the autograd kata: Softplus and StraightThroughRound (torch.autograd.Function),
mlp_backward (every gradient of a two-layer tanh MLP by hand) and clip_grad_hook.

Softplus against F.softplus in float64 (values and gradients), with large |beta * x|
where the textbook formula overflows; torch.autograd.gradcheck in float64 run where the
learner's code runs; its backward returns None for beta; what it saves goes through
ctx.save_for_backward (saved-tensor hooks see it). StraightThroughRound: torch.round
forward (halves to even), identity backward, and gradcheck of the straight-through
surrogate. mlp_backward against torch's autograd in float64, with autograd forbidden
inside it (a second Rules object) and no op building a graph (a spy), and no loop over
the batch (op counts). clip_grad_hook: each backward's gradient clipped before it is
accumulated, a RemovableHandle that stops it, and the gradient it is given left alone (a
spy hook). Nothing here is random: no statistical check. No speed check: course.toml.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from kata import checks, course
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("autograd")
rules = checks.Rules(TOPIC.forbidden)
# mlp_backward computes gradients without autograd: the topic's list cannot forbid it,
# because the other checks run the learner's backward through autograd.
mlp_rules = checks.Rules((*TOPIC.forbidden, "torch.Tensor.backward", "backward", "grad", "torch.autograd.*", "torch.func.*"))


@pytest.fixture(scope="module")
def auto(impl):
    return impl.load("autograd")


def leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_()


# ---------------------------------------------------------------- Softplus


# name -> (shape, scale, offset, beta, dtype)
SOFTPLUS_CASES = {
    "beta_1": ((3, 4), 3.0, 0.0, 1.0, torch.float32),
    "beta_2": ((3, 4), 3.0, 0.0, 2.0, torch.float32),
    "beta_half": ((3, 4), 3.0, 0.0, 0.5, torch.float32),
    # beta * x up to about 130: exp overflows float32 above 88.7.
    "large_positive": ((4, 5), 10.0, 90.0, 1.0, torch.float32),
    # beta * x down to about -130: exp(-beta * x) overflows as well.
    "large_negative": ((4, 5), 10.0, -90.0, 1.0, torch.float32),
    "large_beta": ((4, 5), 3.0, 0.0, 50.0, torch.float32),
    # Where softplus(x) is x itself for every beta: a result that ignores beta is right
    # here, one that forgets to divide by beta is 3x off.
    "large_positive_beta_3": ((4, 5), 10.0, 90.0, 3.0, torch.float32),
    # float64 overflows above 709.
    "float64_large": ((4, 5), 100.0, 750.0, 1.0, torch.float64),
    "float64_mixed": ((3, 4), 3.0, 0.0, 1.5, torch.float64),
}


def softplus_case(name: str, device):
    shape, scale, offset, beta, dtype = SOFTPLUS_CASES[name]
    x = (randn(*shape, seed=len(name), device="cpu", dtype=torch.float64, scale=scale) + offset).to(device=device, dtype=dtype)
    return x, beta


def torch_softplus(x, beta):
    # F.softplus returns x itself above beta * x = 20: 2e-9 / beta from the exact value,
    # well inside the float32 tolerance; in float64 the threshold is raised out of reach
    # and its log1p(exp(.)) is exact up to 709.
    return F.softplus(x, beta, threshold=20 if x.dtype != torch.float64 else 700)


def exact_softplus(x, beta):
    """log(1 + exp(beta x)) / beta in float64 for every x (logaddexp never overflows)."""
    z = golden(x) * beta
    return torch.logaddexp(torch.zeros_like(z), z) / beta


@pytest.mark.parametrize("case", SOFTPLUS_CASES)
def test_softplus_matches_torch(auto, device, case):
    x, beta = softplus_case(case, device)
    what = describe_call("Softplus.apply", x, beta)
    got = rules.call(auto.Softplus.apply, x, beta, what=what)
    want = exact_softplus(x, beta)
    expect_close(got, want, what=what, dtype=x.dtype, device=device, baseline=torch_softplus(x, beta))


@pytest.mark.parametrize("case", ["beta_2", "beta_half", "large_positive", "large_negative", "float64_large"])
def test_softplus_gradient_matches_torch(auto, device, case):
    """x.grad after a backward with a non-trivial upstream gradient: sigmoid(beta x) times it."""
    x, beta = softplus_case(case, device)
    what = describe_call("Softplus.apply", x, beta)
    x_leaf = leaf(x)
    upstream = randn(*x.shape, seed=9, device=device, dtype=x.dtype)
    out = rules.call(auto.Softplus.apply, x_leaf, beta, what=what, backward=upstream)
    checks.expect_tensor(out, shape=x.shape, dtype=x.dtype, device=device, what=what)
    if x_leaf.grad is None:
        raise checks.Wrong(f"after backward through {what}, x.grad is None: no gradient reaches x")
    g = leaf(golden(x))
    (torch_softplus(g, beta) * golden(upstream)).sum().backward()
    b = leaf(x)
    (torch_softplus(b, beta) * upstream).sum().backward()
    expect_close(x_leaf.grad, g.grad, what=f"x.grad after {what}", dtype=x.dtype, device=device, baseline=b.grad)


def gradcheck_softplus(softplus, x: Tensor, beta: float) -> str | None:
    """torch.autograd.gradcheck of x -> softplus.apply(x, beta) in float64, run in the
    executor where the learner's Function is; None when it passes, else why not."""
    from torch.autograd.gradcheck import GradcheckError

    x = x.detach().to(torch.float64).requires_grad_()
    try:
        torch.autograd.gradcheck(lambda t: softplus.apply(t, beta), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    except GradcheckError as exc:
        return str(exc)[:600]
    return None


@pytest.mark.parametrize("beta", [1.0, 2.5], ids=lambda b: f"beta={b:g}")
def test_softplus_passes_gradcheck(auto, device, beta):
    """The hand-written backward against finite differences of the forward, in float64."""
    x = randn(3, 4, seed=5, device=device, dtype=torch.float64, scale=2.0)
    what = describe_call("gradcheck(Softplus.apply", x, beta) + ")"
    failure = rules.call(gradcheck_softplus, auto.Softplus, x, beta, what=what)
    if failure is not None:
        raise checks.Wrong(f"{what} fails: the backward is not the derivative of the forward:\n  {failure}")


def test_softplus_backward_returns_none_for_beta(auto, device):
    """backward returns one gradient per forward input, and None for beta, a Python float:
    autograd refuses anything else when the backward runs."""
    x, beta = softplus_case("beta_2", device)
    what = describe_call("Softplus.apply", x, beta)
    try:
        rules.call(auto.Softplus.apply, leaf(x), beta, what=what, backward=torch.ones_like(x))
    except RuntimeError as exc:
        text = str(exc)
        if "gradient different than None" in text or "incorrect number of gradients" in text:
            raise checks.Wrong(
                f"the backward of {what} {'returned a gradient for beta' if 'None' in text else 'returned the wrong number of gradients'}: "
                "it must return exactly one value per forward input, (grad_x, None), None for beta, which is not a tensor"
            ) from None
        raise


def softplus_saved(softplus, x: Tensor, beta: float) -> dict:
    """The tensors the forward saves through ctx.save_for_backward (saved-tensor hooks see
    exactly those), and x.grad after a backward: run in the executor."""
    packed = []

    def pack(t):
        packed.append(list(t.shape))
        return t

    x = x.detach().clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = softplus.apply(x, beta)
    y.backward(torch.ones_like(y))
    return {"packed": packed, "grad": x.grad}


def test_softplus_saves_with_save_for_backward(auto, device):
    """A tensor kept as an attribute of ctx (ctx.x = x) escapes autograd: a later in-place
    change to x goes unnoticed (a wrong gradient instead of an error), saved-tensor hooks
    (activation offloading, checkpointing) miss it, and ctx keeps it alive."""
    x, beta = softplus_case("beta_2", device)
    what = describe_call("Softplus.apply", x, beta)
    saved = rules.call(softplus_saved, auto.Softplus, x, beta, what=what)
    if not saved["packed"]:
        raise checks.Wrong(
            f"{what} saved no tensor with ctx.save_for_backward, yet its backward needs x (or the output): "
            "keep tensors with ctx.save_for_backward(...) and read them from ctx.saved_tensors"
        )


# ---------------------------------------------------------------- StraightThroughRound


def round_case(name: str, device) -> Tensor:
    if name == "halves":
        # Exact halves round to even (torch.round, like Python's round): 0.5 -> 0, 1.5 -> 2.
        x = torch.tensor([[-3.5, -2.5, -1.5, -0.5], [0.5, 1.5, 2.5, 3.5], [0.49, 0.51, -0.49, -0.51]])
        return x.to(device)
    if name == "float64":
        return randn(3, 4, seed=3, device=device, dtype=torch.float64, scale=5.0)
    if name == "non_contiguous":
        return randn(4, 3, seed=4, device=device, scale=5.0).T
    return randn(3, 4, seed=2, device=device, scale=5.0)  # "random"


@pytest.mark.parametrize("case", ["random", "halves", "float64", "non_contiguous"])
def test_straight_through_round_forward(auto, device, case):
    x = round_case(case, device)
    what = describe_call("StraightThroughRound.apply", x)
    got = rules.call(auto.StraightThroughRound.apply, x, what=what)
    expect_close(got, torch.round(golden(x)), what=what, dtype=x.dtype, device=device)


@pytest.mark.parametrize("case", ["random", "halves", "ones_upstream"])
def test_straight_through_round_gradient_is_identity(auto, device, case):
    """x.grad is the upstream gradient itself, as if the forward were the identity; with
    ones upstream (the gradient of round(x).sum()) x.grad is ones."""
    x = round_case("random" if case == "ones_upstream" else case, device)
    what = describe_call("StraightThroughRound.apply", x)
    x_leaf = leaf(x)
    upstream = torch.ones_like(x) if case == "ones_upstream" else randn(*x.shape, seed=9, device=device)
    rules.call(auto.StraightThroughRound.apply, x_leaf, what=what, backward=upstream)
    if x_leaf.grad is None:
        raise checks.Wrong(f"after backward through {what}, x.grad is None: no gradient reaches x")
    expect_close(x_leaf.grad, upstream, what=f"x.grad after {what} (should be the upstream gradient)", dtype=x.dtype, device=device)


def gradcheck_straight_through(ste, x: Tensor) -> str | None:
    """gradcheck of the straight-through surrogate x -> ste(x) + (x - round(x)).detach(),
    run in the executor. Its forward is x, so finite differences give the identity; its
    analytical gradient is the learner's backward. (gradcheck of ste alone would compare the
    backward with round's derivative, 0, and reject every straight-through estimator.)"""
    from torch.autograd.gradcheck import GradcheckError

    x = x.detach().to(torch.float64).requires_grad_()
    try:
        torch.autograd.gradcheck(lambda t: ste.apply(t) + (t - torch.round(t)).detach(), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    except GradcheckError as exc:
        return str(exc)[:600]
    return None


def test_straight_through_round_passes_gradcheck(auto, device):
    # Integers plus at most 0.4: finite differences never cross a rounding boundary.
    k = torch.arange(-6, 6, dtype=torch.float64).reshape(3, 4)
    x = (k + 0.4 * torch.rand(3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64) - 0.2).to(device)
    what = "gradcheck of x -> StraightThroughRound.apply(x) + (x - round(x)).detach() on float64 (3, 4)"
    failure = rules.call(gradcheck_straight_through, auto.StraightThroughRound, x, what=what)
    if failure is not None:
        raise checks.Wrong(f"{what} fails: the backward is not the identity:\n  {failure}")


# ---------------------------------------------------------------- mlp_backward


def torch_mlp(x, w1, b1, w2, b2):
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


# name -> (N, D_in, H, D_out, x scale, dtype, non-contiguous)
MLP_CASES = {
    "basic": (4, 3, 5, 2, 1.0, torch.float32, False),
    "one_example": (1, 3, 5, 2, 1.0, torch.float32, False),
    # D_in == H == D_out: a transposed weight gradient has the right shape, and is wrong.
    "square": (4, 4, 4, 4, 1.0, torch.float32, False),
    # Pre-activations around +-10: tanh saturates, its derivative is nearly 0.
    "saturated": (6, 3, 5, 2, 6.0, torch.float32, False),
    "non_contiguous": (4, 3, 5, 2, 1.0, torch.float32, True),
    "float64": (4, 3, 5, 2, 1.0, torch.float64, False),
}


def mlp_case(name: str, device) -> dict:
    n, d_in, h, d_out, scale, dtype, transposed = MLP_CASES[name]

    def r(*shape, seed, s=1.0):
        return randn(*shape, seed=seed, device=device, dtype=dtype, scale=s)

    x = r(d_in, n, seed=1, s=scale).T if transposed else r(n, d_in, seed=1, s=scale)
    w1 = r(d_in, h, seed=2).T if transposed else r(h, d_in, seed=2)
    return {"x": x, "w1": w1, "b1": r(h, seed=3), "w2": r(d_out, h, seed=4), "b2": r(d_out, seed=5), "grad_out": r(n, d_out, seed=6)}


GRAD_NAMES = ("grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2")


def autograd_grads(inputs, grad_out):
    inputs = [leaf(v) for v in inputs]
    return torch.autograd.grad(torch_mlp(*inputs), inputs, grad_out)


@pytest.mark.parametrize("grad", GRAD_NAMES)
@pytest.mark.parametrize("case", MLP_CASES)
def test_mlp_backward_matches_autograd(auto, device, case, grad):
    """One of the five gradients against torch's autograd through the same MLP in float64
    (one check per gradient: which of them are wrong says where the mistake is)."""
    t = mlp_case(case, device)
    what = describe_call("mlp_backward", *t.values())
    got = mlp_rules.call(auto.mlp_backward, *t.values(), what=what)
    if not isinstance(got, (tuple, list)) or len(got) != 5:
        raise checks.Wrong(f"{what} returned {checks.describe(got)}; expected a tuple of 5 tensors ({', '.join(GRAD_NAMES)})")
    params = ("x", "w1", "b1", "w2", "b2")
    i = GRAD_NAMES.index(grad)
    want = autograd_grads([golden(t[p]) for p in params], golden(t["grad_out"]))[i]
    base = autograd_grads([t[p] for p in params], t["grad_out"])[i]
    expect_close(got[i], want, what=f"{grad} (item {i} of the result) from {what}", dtype=t["x"].dtype, device=device, baseline=base)


class _GraphFound(Exception):
    """Raised by _GraphWatch to stop the call at the first op that builds a graph."""


class _GraphWatch(TorchFunctionMode):
    """Stops at the first torch call whose result requires grad (an autograd graph being
    built), after recording it: run in the executor."""

    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves, _ = tree_flatten(out)
        if any(isinstance(t, Tensor) and t.requires_grad for t in leaves):
            self.found.append(getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func)))
            raise _GraphFound
        return out


def graph_built(fn, *args) -> list[str]:
    """The first torch call of fn(*args) that returned a tensor requiring grad (the call
    stops there: a backward through it would only hit other rules first), or 'the result'
    if what it returned requires grad; [] when neither. Run in the executor."""
    found: list[str] = []
    try:
        with _GraphWatch(found):
            out = fn(*args)
    except _GraphFound:
        return found
    if found:  # the learner's code caught _GraphFound: what it found still counts
        return found
    leaves, _ = tree_flatten(out)
    return ["the result"] if any(isinstance(t, Tensor) and t.requires_grad for t in leaves) else []


def test_mlp_backward_builds_no_graph(auto, device):
    """Gradients by hand, so no autograd: inputs that do not require grad, and no op inside
    that returns a tensor requiring grad (requires_grad_, nn.Parameter, enable_grad...)."""
    t = mlp_case("basic", device)
    what = describe_call("mlp_backward", *t.values())
    # The topic's rules only: a call to backward or autograd.grad shows here as the graph
    # it needs, and every other mlp_backward check refuses it by name.
    found = rules.call(graph_built, auto.mlp_backward, *t.values(), what=what)
    if found:
        raise checks.Wrong(
            f"{what} builds an autograd graph ({', '.join(str(f) for f in found[:4])} returned tensors that require grad): "
            "compute every gradient by hand from the forward's activations, with no tensor requiring grad"
        )


def mlp_ops(auto, n: int, device):
    """The aten ops of one mlp_backward call on the "basic" weights and a batch of n."""
    t = mlp_case("basic", device)
    x = randn(n, t["x"].shape[1], seed=1, device=device)
    grad_out = randn(n, t["grad_out"].shape[1], seed=6, device=device)
    return mlp_rules.count_ops(auto.mlp_backward, x, t["w1"], t["b1"], t["w2"], t["b2"], grad_out)


def test_mlp_backward_no_loop_over_batch(auto, device):
    """The same aten ops for a batch of 3 as for a batch of 11."""
    checks.expect_same_op_count(
        partial(mlp_ops, auto, 3, device), partial(mlp_ops, auto, 11, device),
        what="mlp_backward", small_desc="N = 3", large_desc="N = 11",
    )  # fmt: skip


# ---------------------------------------------------------------- clip_grad_hook


def clip_scenario(clip_grad_hook, p0: Tensor, max_abs: float, upstreams: list, remove_before: int | None = None) -> dict:
    """In the executor: a fresh parameter p = p0, the learner's hook on it, then one
    backward per upstream u of (p * u).sum() (whose gradient for p is exactly u), with
    handle.remove() before backward number `remove_before`. A spy hook registered first
    keeps each incoming gradient and a copy, to see whether a later hook changes it in place."""
    p = nn.Parameter(p0.detach().clone())
    seen = []
    p.register_hook(lambda g: seen.append((g, g.clone())))
    handle = clip_grad_hook(p, max_abs)
    grads = []
    for i, u in enumerate(upstreams):
        if i == remove_before:
            handle.remove()
        (p * u).sum().backward()
        grads.append(None if p.grad is None else p.grad.detach().clone())
    return {
        "grads": grads,
        "handle": f"{type(handle).__module__}.{type(handle).__qualname__}",
        "modified": [not torch.equal(g, c) for g, c in seen],
    }


def upstream(seed: int, device, shape=(3, 4)) -> Tensor:
    return randn(*shape, seed=seed, device=device, scale=2.0)


def run_clip(auto, device, max_abs, ups, remove_before=None):
    p0 = randn(*ups[0].shape, seed=1, device=device)
    what = f"clip_grad_hook(p {tuple(p0.shape)}, {max_abs:g}) then {len(ups)} backward pass(es)"
    if remove_before is not None:
        what += f", the handle removed before pass {remove_before + 1}"
    return rules.call(clip_scenario, auto.clip_grad_hook, p0, max_abs, ups, remove_before, what=what), what


def expect_grad(got, want, *, what: str, device) -> None:
    if got is None:
        raise checks.Wrong(f"{what}: p.grad is None")
    expect_close(got, want, what=what, dtype=torch.float32, device=device)


# name -> (max_abs, shape)
CLIP_CASES = {
    "mixed": (0.5, (3, 4)),
    "nothing_to_clip": (10.0, (3, 4)),
    "vector": (1.0, (7,)),
    "tight": (0.05, (2, 3, 2)),
    # Every element within max_abs, the norm far beyond it: elementwise clipping leaves
    # the gradient alone, norm clipping shrinks it.
    "many_small_elements": (0.5, (10, 10)),
}


@pytest.mark.parametrize("case", CLIP_CASES)
def test_clip_hook_clips_gradient(auto, device, case):
    """One backward: p.grad is the gradient clamped to [-max_abs, max_abs], elementwise."""
    max_abs, shape = CLIP_CASES[case]
    u = upstream(11, device, shape)
    if case == "many_small_elements":
        u = 0.45 * torch.tanh(u)
    result, what = run_clip(auto, device, max_abs, [u])
    expect_grad(result["grads"][0], u.clamp(-max_abs, max_abs), what=f"p.grad after {what}", device=device)


def test_clip_hook_returns_a_removable_handle(auto, device):
    result, what = run_clip(auto, device, 0.5, [upstream(11, device)])
    if result["handle"] != "torch.utils.hooks.RemovableHandle":
        raise checks.Wrong(
            f"{what}: clip_grad_hook returned {result['handle']}; expected the torch.utils.hooks.RemovableHandle "
            "that parameter.register_hook returns"
        )


def test_clip_hook_removed_stops_clipping(auto, device):
    """After handle.remove(), the next backward's gradient is accumulated unclipped."""
    u1, u2 = upstream(11, device), upstream(12, device)
    result, what = run_clip(auto, device, 0.5, [u1, u2], remove_before=1)
    expect_grad(result["grads"][1], u1.clamp(-0.5, 0.5) + u2, what=f"p.grad after {what}", device=device)


def test_clip_hook_clips_each_backward(auto, device):
    """Two backward passes: p.grad = clip(g1) + clip(g2), each pass clipped before it is
    accumulated, not the accumulated sum clipped (clip(g1 + g2))."""
    u1, u2 = upstream(11, device), upstream(12, device)
    result, what = run_clip(auto, device, 0.5, [u1, u2])
    expect_grad(result["grads"][0], u1.clamp(-0.5, 0.5), what=f"p.grad after the first pass of {what}", device=device)
    expect_grad(result["grads"][1], u1.clamp(-0.5, 0.5) + u2.clamp(-0.5, 0.5), what=f"p.grad after {what}", device=device)


def test_clip_hook_does_not_modify_the_incoming_gradient(auto, device):
    """The hook returns a new tensor: the gradient autograd hands it may be shared (by the
    other input of an addition, by other hooks), so clamping it in place changes them too."""
    result, what = run_clip(auto, device, 0.5, [upstream(11, device)])
    if any(result["modified"]):
        raise checks.Wrong(
            f"{what}: the hook modified the gradient it was given in place (clamp_?); return a new tensor (grad.clamp(...)) instead"
        )
