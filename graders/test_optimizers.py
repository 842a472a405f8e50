"""Grader for the optimizers kata: SGD, Adam and AdamW as torch.optim.Optimizer subclasses.

Every check trains the same small model (an MLP's four parameters of different shapes,
float64) for 100 steps on seeded gradients (seeded noise plus a pull towards 0, so they
depend on the parameters), once with the learner's optimizer (in the
executor, under the rules) and once with torch.optim's own (foreach=False) here, and
compares the parameters after every step. Cases cover every option, two param groups
with their own hyperparameters, a parameter whose gradient is None on some steps, a run
resumed from a state_dict taken at step 50 into a fresh optimizer (saved and loaded as a
checkpoint), the learning rate changed through param_groups mid-run, closures, gradients
zeroed in place, and p.grad left unmodified. Invalid hyperparameters must raise
ValueError. Rules: a subclass of torch.optim.Optimizer and of no concrete torch.optim
optimizer; torch.optim's own step functions (torch.optim.sgd.sgd, adam.adam,
_single_tensor_*, _multi_tensor_*, _fused_*) are never called, caught by a profile hook
around the learner's calls (they are plain Python, below the reach of the kata's
function and dispatch modes), and the fused aten kernels are forbidden in course.toml.
"""

from __future__ import annotations

import importlib
import inspect
import io
from contextlib import contextmanager
from functools import partial

import pytest
import torch
from torch.optim import Optimizer
from torch.utils._python_dispatch import _disable_current_modes

from kata import checks, course, harness
from kata.checks import RuleBroken, expect_close, randn

TOPIC = course.get("optimizers")
rules = checks.Rules(TOPIC.forbidden)

IN, HIDDEN, OUT, STEPS = 4, 6, 3, 100
NAMES = ("w1", "b1", "w2", "b2")


@pytest.fixture(scope="module")
def opts(impl):
    return impl.load("optimizers")


# ---------------------------------------------------------------- the model and its gradients


def initial_params(device):
    """A small model's parameters: an MLP's two weight matrices and two biases, float64."""
    shapes = [(IN, HIDDEN), (HIDDEN,), (HIDDEN, OUT), (OUT,)]
    return [randn(*s, seed=10 + i, device=device, dtype=torch.float64, scale=0.6) for i, s in enumerate(shapes)]


def make_noise(device, steps=STEPS):
    """Seeded gradient noise, one tensor per parameter and step (scales from 0.01 to 3, so
    eps and the second moment both matter)."""
    shapes = [(IN, HIDDEN), (HIDDEN,), (HIDDEN, OUT), (OUT,)]
    scales = [1.0, 0.01, 3.0, 0.3]
    return [[randn(*shape, seed=1000 * (i + 1) + s, device=device, dtype=torch.float64, scale=scale)
             for i, (shape, scale) in enumerate(zip(shapes, scales))] for s in range(steps)]  # fmt: skip


def loss_and_grads(params, noise, with_loss=False):
    """The loss sum(0.05 p^2 + n p) of a step's noise n (with_loss: else None), and its
    gradient 0.1 p + n: a gradient that depends on the parameters (mistakes compound, as in
    training) at a few ops' cost."""
    loss = sum(((0.05 * p) * p + n * p).sum() for p, n in zip(params, noise)) if with_loss else None
    return loss, [0.1 * p + n for p, n in zip(params, noise)]


# ---------------------------------------------------------------- forbidden step functions


def _forbidden_kernels() -> dict:
    """The code objects of torch.optim's own SGD/Adam/AdamW step functions, by name."""
    found = {}
    # torch.optim's __init__ deletes its submodules' names: import them by name.
    for module in (importlib.import_module(f"torch.optim.{m}") for m in ("sgd", "adam", "adamw")):
        for name, obj in vars(module).items():
            if name in ("sgd", "adam", "adamw") or name.startswith(("_single_tensor_", "_multi_tensor_", "_fused_")):
                if callable(obj) and not inspect.isclass(obj):
                    found[inspect.unwrap(obj).__code__] = f"{module.__name__}.{name}"
    for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        for name in ("step", "_init_group"):
            fn = cls.__dict__.get(name)
            if fn is not None:
                found[inspect.unwrap(fn).__code__] = f"torch.optim.{cls.__name__}.{name}"
    return found


FORBIDDEN_KERNELS = _forbidden_kernels()


def KernelWatch(on: bool) -> harness.CallWatch:
    """Around the learner's optimizer calls: torch.optim's own step functions forbidden."""
    return harness.CallWatch(FORBIDDEN_KERNELS.get, " (torch.optim's own step function)", on)

def expect_plain_optimizer(opt) -> None:
    """The rule on the class: torch.optim.Optimizer's subclass, and no concrete torch optimizer's."""
    concrete = [c for c in type(opt).__mro__ if c.__module__.startswith("torch.optim") and c is not Optimizer]
    if concrete:
        raise RuleBroken(f"{type(opt).__name__} subclasses {concrete[0].__module__}.{concrete[0].__qualname__}, "
                         "which this kata forbids: subclass torch.optim.Optimizer and write the update")  # fmt: skip


# ---------------------------------------------------------------- a training run (in either process)


def param_groups(params, groups):
    if groups is None:
        return params
    return [{"params": [params[i] for i in idx], **opts} for idx, opts in groups]


@contextmanager
def bookkeeping():
    """The grader's own tensor work inside a learner call (making gradients, recording the
    parameters), outside the kata's rule modes: their Python cost per aten op (about 50 us)
    made a graded run 16 times slower than a bare one, and grader code needs no rules.
    Never around a call into the learner's optimizer."""
    with torch._C.DisableTorchFunction(), _disable_current_modes(), torch.no_grad():
        yield


def build(make, init, plan, learner=False):
    """make(param groups, **kwargs) on fresh leaf copies of init."""
    with bookkeeping():
        params = [t.detach().clone() for t in init]
    params = [p.requires_grad_() for p in params]
    with KernelWatch(learner):
        opt = make(param_groups(params, plan.get("groups")), **plan.get("kwargs", {}))
    if learner:
        expect_plain_optimizer(opt)
    return params, opt


def train(make, init, noises, plan, learner=False):
    """Steps of make's optimizer on the model (every step's noise); the parameters after each.

    plan: kwargs (the constructor's), groups ([(param indices, options)]), no_grad
    ({param index: [steps where its .grad is None]}), lr_scale ({step: factor for every
    group's lr}), resume_at (a step at which the state_dict is saved and loaded, through
    torch.save/torch.load, into a fresh optimizer over fresh parameters), closure (step
    through a closure), zero_in_place (zero_grad(set_to_none=False), then gradients added
    into .grad in place, as backward does), watch_grads (whether step modified p.grad)."""
    params, opt = build(make, init, plan, learner)
    no_grad = plan.get("no_grad", {})
    after, returned, closure_calls, grad_changed, grad_enabled = [], [], [], None, []
    for step, noise in enumerate(noises):
        if step == plan.get("resume_at"):
            buffer = io.BytesIO()
            with KernelWatch(learner):
                saved = opt.state_dict()
            with bookkeeping():
                torch.save(saved, buffer)
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
            params, opt = build(make, [p.detach() for p in params], plan, learner)
            with KernelWatch(learner):
                opt.load_state_dict(saved)
        if step in plan.get("lr_scale", {}):
            for group in opt.param_groups:
                group["lr"] = group["lr"] * plan["lr_scale"][step]
        calls = [0]

        def closure(params=params, opt=opt, noise=noise, step=step, calls=calls):
            """What a training loop does before step(): zero the gradients, then backward
            (which accumulates into .grad in place when it is a tensor)."""
            calls[0] += 1
            grad_enabled.append(torch.is_grad_enabled())  # step runs under no_grad: the closure's backward needs grad
            in_place = plan.get("zero_in_place", False)
            with KernelWatch(learner):
                opt.zero_grad(set_to_none=not in_place)
            with bookkeeping():
                loss, grads = loss_and_grads(params, noise, with_loss=plan.get("closure", False))
                if plan.get("zero_grads"):
                    grads = [torch.zeros_like(g) for g in grads]
                for i, (p, g) in enumerate(zip(params, grads)):
                    if step in no_grad.get(i, ()):
                        p.grad = None
                    elif in_place and p.grad is not None:
                        p.grad.add_(g)
                    else:
                        p.grad = g
            return loss

        with KernelWatch(learner):
            if plan.get("closure"):
                got = opt.step(closure)
            else:
                closure()
                if plan.get("watch_grads"):
                    with bookkeeping():
                        grads = [None if p.grad is None else p.grad.clone() for p in params]
                got = opt.step()
        with bookkeeping():
            if plan.get("watch_grads") and grad_changed is None:
                if any(g is not None and (p.grad is None or not torch.equal(p.grad, g)) for p, g in zip(params, grads)):
                    grad_changed = step + 1
            returned.append(float(got) if isinstance(got, torch.Tensor) else got)
            closure_calls.append(calls[0])
            after.append(torch.cat([p.reshape(-1) for p in params]))
    with bookkeeping():
        return {"params": torch.stack(after), "returned": returned, "closure_calls": closure_calls, "grad_changed": grad_changed,
                "grad_enabled": grad_enabled}


TORCH = {
    "SGD": partial(torch.optim.SGD, foreach=False),
    "Adam": partial(torch.optim.Adam, foreach=False),
    "AdamW": partial(torch.optim.AdamW, foreach=False),
}


def offsets():
    sizes = [IN * HIDDEN, HIDDEN, HIDDEN * OUT, OUT]
    bounds, start = [], 0
    for name, n in zip(NAMES, sizes):
        bounds.append((name, start, start + n))
        start += n
    return bounds


def where(flat_index: int) -> str:
    for name, lo, hi in offsets():
        if lo <= flat_index < hi:
            return f"{name}[{flat_index - lo}]"
    return str(flat_index)


def describe_plan(name: str, plan: dict) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in plan.get("kwargs", {}).items())
    text = f"{name}(params, {kwargs})" if kwargs else f"{name}(params)"
    extras = []
    if plan.get("groups"):
        extras.append("param groups " + "; ".join(f"{[NAMES[i] for i in idx]} {opts}" for idx, opts in plan["groups"]))
    if plan.get("no_grad"):
        extras.append("; ".join(f"{NAMES[i]}.grad None on steps {min(s) + 1}-{max(s) + 1} ({len(s)} steps)" for i, s in plan["no_grad"].items()))
    if "resume_at" in plan:
        extras.append(f"state_dict saved after step {plan['resume_at']} and loaded into a fresh optimizer")
    if plan.get("lr_scale"):
        extras.append("lr multiplied by " + ", ".join(f"{f:g} before step {s + 1}" for s, f in plan["lr_scale"].items()))
    if plan.get("closure"):
        extras.append("step(closure)")
    if plan.get("zero_in_place"):
        extras.append("zero_grad(set_to_none=False)")
    return f"{text}, {plan.get('steps', STEPS)} steps" + "".join(f"; {e}" for e in extras)


def run_both(opts, device, name: str, plan: dict):
    checks.need_dtype(torch.float64, device)
    init, noises = initial_params(device), make_noise(device, plan.get("steps", STEPS))
    what = describe_plan(name, plan)
    got = rules.call(train, getattr(opts, name), init, noises, plan, learner=True, what=what)
    want = train(TORCH[name], [t.cpu() for t in init], [[n.cpu() for n in ns] for ns in noises], plan)
    return got, want, what


def expect_same_trajectory(got, want, what: str) -> None:
    """The parameters after every step, the first diverging step reported."""
    params = got["params"]
    checks.expect_tensor(params, shape=want["params"].shape, dtype=torch.float64, device=params.device, what=what)
    for step in range(len(want["params"])):
        try:
            expect_close(params[step], want["params"][step], what=f"{what}: the parameters after step {step + 1}",
                         dtype=torch.float64, device=params.device)  # fmt: skip
        except checks.Wrong as exc:
            err = (params[step].cpu() - want["params"][step]).abs().nan_to_num(float("inf"))
            raise checks.Wrong(f"{exc}\n  (index {int(err.argmax())} is {where(int(err.argmax()))}; every earlier step matched)") from None


# ---------------------------------------------------------------- trajectories, every option

SGD_CASES = {
    "momentum": {"lr": 0.05, "momentum": 0.9},
    "momentum_dampening": {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
    "weight_decay": {"lr": 0.1, "weight_decay": 0.05},
    "momentum_weight_decay": {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.05},
    "nesterov_weight_decay": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
}
ADAM_CASES = {
    "defaults": {"lr": 1e-2},
    "weight_decay": {"lr": 1e-2, "weight_decay": 0.1},
    "amsgrad": {"lr": 1e-2, "amsgrad": True},
    # eps near sqrt(v) of the small gradients: where eps sits (inside the root, before the
    # bias correction) shows.
    "betas_large_eps": {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-2},
}
ADAMW_CASES = {
    "defaults": {"lr": 1e-2},
    "amsgrad_strong_decay": {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.3},
    "betas_large_eps": {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-2},
}


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_torch(opts, device, case):
    got, want, what = run_both(opts, device, "SGD", {"kwargs": SGD_CASES[case]})
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_matches_torch(opts, device, case):
    got, want, what = run_both(opts, device, "Adam", {"kwargs": ADAM_CASES[case]})
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("case", list(ADAMW_CASES))
def test_adamw_matches_torch(opts, device, case):
    got, want, what = run_both(opts, device, "AdamW", {"kwargs": ADAMW_CASES[case]})
    expect_same_trajectory(got, want, what)


# Each case makes some terms of Adam's update irrelevant, so that a mistake in another shows
# alone: with eps=0 only the bias corrections matter, not where eps sits; with beta2=0,
# v = g^2 needs no correction (1 - 0^t = 1), so only the first moment's does, eps's place
# relative to the second moment's correction cannot matter (inside the root it still
# does), and amsgrad's maximum of v is its own bias-corrected maximum too. (beta2=0 with
# eps=0 divides by |g|, which can be arbitrarily small: a chaotic run that two correct
# roundings do not agree on; eps keeps it well conditioned.)
ISOLATED_CASES = {
    "no_eps": {"lr": 1e-2, "eps": 0.0},
    "beta2_0": {"lr": 1e-2, "betas": (0.9, 0.0), "eps": 1e-2},
    "beta2_0_amsgrad": {"lr": 1e-2, "betas": (0.9, 0.0), "eps": 1e-3, "amsgrad": True},
}


@pytest.mark.parametrize("case", list(ISOLATED_CASES))
def test_adam_terms_in_isolation(opts, device, case):
    """100 Adam steps where only some terms of the update can matter (see ISOLATED_CASES)."""
    got, want, what = run_both(opts, device, "Adam", {"kwargs": ISOLATED_CASES[case]})
    expect_same_trajectory(got, want, what)


def test_adamw_decay_alone(opts, device):
    """With every gradient 0, AdamW's moments stay 0 and only the decoupled decay acts:
    p shrinks by (1 - lr * weight_decay) each step. Decay folded into the gradient moves
    the weights by about lr per step instead."""
    plan = {"kwargs": {"lr": 1e-2, "weight_decay": 0.1}, "zero_grads": True}
    got, want, what = run_both(opts, device, "AdamW", plan)
    expect_same_trajectory(got, want, what + "; every gradient 0")


# ---------------------------------------------------------------- what a training loop relies on

OPTIMIZERS = ["SGD", "Adam", "AdamW"]
BASE = {"SGD": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}, "Adam": {"lr": 1e-2, "weight_decay": 0.1},
        "AdamW": {"lr": 1e-2, "weight_decay": 0.1}}  # fmt: skip
GROUP_OPTIONS = {
    "SGD": [((0, 1), {"lr": 0.02}), ((2, 3), {"momentum": 0.5, "weight_decay": 0.0, "nesterov": True})],
    "Adam": [((0, 1), {"lr": 3e-3}), ((2, 3), {"betas": (0.8, 0.9), "weight_decay": 0.0, "amsgrad": True})],
    "AdamW": [((0, 1), {"lr": 3e-3}), ((2, 3), {"betas": (0.8, 0.9), "weight_decay": 0.5})],
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_param_groups(opts, device, name):
    """Two groups, each with its own lr and options; the constructor's values fill in the rest."""
    got, want, what = run_both(opts, device, name, {"kwargs": BASE[name], "groups": GROUP_OPTIONS[name]})
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_skips_params_without_grad(opts, device, name):
    """b1.grad is None on 25 of the steps: b1 is left alone then (no decay, no momentum, no
    step counted), and its bias correction later uses its own step count."""
    plan = {"kwargs": BASE[name], "no_grad": {1: list(range(10, 30)) + [45, 52, 67, 81, 90]}}
    got, want, what = run_both(opts, device, name, plan)
    expect_same_trajectory(got, want, what)


RESUME = {"SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True}, "Adam": {"lr": 1e-2, "amsgrad": True},
          "AdamW": {"lr": 1e-2, "weight_decay": 0.1}}  # fmt: skip


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_from_state_dict(opts, device, name):
    """state_dict() after 50 steps, through torch.save/torch.load, into a fresh optimizer with
    load_state_dict(): the run continues exactly as if never interrupted."""
    got, want, what = run_both(opts, device, name, {"kwargs": RESUME[name], "resume_at": 50})
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lr_changed_in_param_groups(opts, device, name):
    """A scheduler sets group["lr"] between steps: step() must read it every time."""
    plan = {"kwargs": BASE[name], "lr_scale": {30: 0.3, 60: 5.0, 80: 0.1}}
    got, want, what = run_both(opts, device, name, plan)
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_with_closure(opts, device, name):
    """step(closure) calls the closure once, with autograd on, and returns its loss."""
    got, want, what = run_both(opts, device, name, {"kwargs": BASE[name], "closure": True, "steps": 10})
    if set(got["closure_calls"]) != {1}:
        raise checks.Wrong(f"{what}: step called the closure {sorted(set(got['closure_calls']))} times per step; expected once")
    bad = next((i for i, (g, w) in enumerate(zip(got["returned"], want["returned"])) if g is None or abs(g - w) > 1e-9 * max(1.0, abs(w))), None)
    if bad is not None:
        raise checks.Wrong(f"{what}: step {bad + 1} returned {got['returned'][bad]!r}; expected the closure's loss {want['returned'][bad]:.6g}")
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_closure_called_with_grad_enabled(opts, device, name):
    """step runs under torch.no_grad(); the closure's backward() needs autograd, so step
    must call it inside torch.enable_grad()."""
    got, want, what = run_both(opts, device, name, {"kwargs": BASE[name], "closure": True, "steps": 3})
    if not all(got["grad_enabled"]):
        raise checks.Wrong(f"{what}: step called the closure with autograd disabled (step runs under torch.no_grad), "
                           "so its loss.backward() fails; call it inside `with torch.enable_grad():`")  # fmt: skip


def test_momentum_survives_grads_zeroed_in_place(opts, device):
    """zero_grad(set_to_none=False) zeroes p.grad in place before each backward: a momentum
    buffer that is p.grad itself (not a copy) is wiped with it."""
    got, want, what = run_both(opts, device, "SGD", {"kwargs": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1}, "zero_in_place": True})
    expect_same_trajectory(got, want, what)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_leaves_grads_unmodified(opts, device, name):
    """step() reads p.grad and never writes it (weight decay included): gradients are logged,
    clipped and accumulated by the code around the optimizer."""
    got, want, what = run_both(opts, device, name, {"kwargs": BASE[name], "watch_grads": True, "steps": 5})
    if got["grad_changed"] is not None:
        raise checks.Wrong(f"{what}: step {got['grad_changed']} modified p.grad in place; an optimizer only reads the gradient")


# ---------------------------------------------------------------- the class and its hyperparameters

GROUP_KEYS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01, "nesterov": False},
    "Adam": {"lr": 2e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01, "amsgrad": True},
    "AdamW": {"lr": 2e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05, "amsgrad": False},
}
DEFAULT_KEYS = {
    "Adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "AdamW": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
}


def group_options(opt) -> list[dict]:
    """Each param group's hyperparameters (everything but the tensors)."""
    return [{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"} for g in opt.param_groups]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_is_a_torch_optimizer(opts, device, name):
    """A torch.optim.Optimizer subclass whose param group holds the hyperparameters under
    torch's names (what schedulers and load_state_dict use); Adam's and AdamW's defaults."""
    init = initial_params(device)
    kwargs = GROUP_KEYS[name]
    what = f"{name}(params, {', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    opt = rules.call(optimizer_of, getattr(opts, name), init, {"kwargs": kwargs}, what=what)
    if not checks.is_instance(opt, Optimizer):
        raise checks.Wrong(f"{what} is a {checks.type_name(opt)}, not a torch.optim.Optimizer")
    groups = group_options(opt)
    missing = {k: v for k, v in kwargs.items() if len(groups) != 1 or groups[0].get(k) != v}
    if missing:
        raise checks.Wrong(f"{what}.param_groups hold {groups}; expected one group with {kwargs}")
    if name in DEFAULT_KEYS:
        what = f"{name}(params, lr=1e-3)"
        defaults = group_options(rules.call(optimizer_of, getattr(opts, name), init, {"kwargs": {"lr": 1e-3}}, what=what))
        wrong = {k: v for k, v in DEFAULT_KEYS[name].items() if defaults[0].get(k) != v}
        if wrong:
            raise checks.Wrong(f"{what} has the group {defaults[0]}; expected the defaults {DEFAULT_KEYS[name]}")


def optimizer_of(make, init, plan):
    """The learner's optimizer over fresh parameters, kept in the executor."""
    return build(make, init, plan, learner=True)[1]


INVALID = {
    "SGD_negative_lr": ("SGD", {"lr": -0.1}),
    "SGD_negative_momentum": ("SGD", {"lr": 0.1, "momentum": -0.5}),
    "SGD_negative_weight_decay": ("SGD", {"lr": 0.1, "weight_decay": -1e-2}),
    "SGD_nesterov_without_momentum": ("SGD", {"lr": 0.1, "nesterov": True}),
    "SGD_nesterov_with_dampening": ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    "Adam_negative_lr": ("Adam", {"lr": -1e-3}),
    "Adam_beta1_one": ("Adam", {"betas": (1.0, 0.999)}),
    "Adam_negative_beta2": ("Adam", {"betas": (0.9, -0.1)}),
    "Adam_negative_eps": ("Adam", {"eps": -1e-8}),
    "AdamW_beta2_one": ("AdamW", {"betas": (0.9, 1.0)}),
    "AdamW_negative_weight_decay": ("AdamW", {"weight_decay": -0.1}),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_hyperparameters_raise(opts, device, case):
    name, kwargs = INVALID[case]
    what = f"{name}(params, {', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    rules.expect_raises(ValueError, optimizer_of, getattr(opts, name), initial_params(device), {"kwargs": kwargs}, what=what)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_edge_hyperparameters_accepted(opts, device, name):
    """The edges torch accepts: lr=0 (nothing moves), momentum 0, betas of 0."""
    kwargs = {"lr": 0.0} if name == "SGD" else {"lr": 0.0, "betas": (0.0, 0.0)}
    got, want, what = run_both(opts, device, name, {"kwargs": kwargs, "steps": 5})
    expect_same_trajectory(got, want, what)
