"""Grader for the mixed_precision kata: DynamicLossScaler and amp_train_step.

DynamicLossScaler is run beside torch.amp.GradScaler (torch's own, in the judge) on the
same small model: a loss whose gradient depends on the parameters, plain SGD (whose step
is proportional to the gradient, so a wrongly unscaled gradient shows), and infinities
and nans injected into chosen parameters' scaled gradients at chosen steps, with
unscale_ called explicitly at some steps and left to step() at others. Compared at every
step: the scale (exactly: float32, as torch's, with factors like 3.0 and 0.3 too), the
growth tracker, which steps were skipped and what step() returned, and the parameters
(float32 tolerance). scale(), the RuntimeError of a second unscale_, and state_dict's
keys and types are checked on their own.

amp_train_step gets torch's own GradScaler (wrapped, its calls recorded) so that its
checks do not depend on your scaler. Its parameter update is compared with one step of
the same model in float64 without autocast; the tolerance is bfloat16's (float16's on
CUDA) plus 4x the error torch's own autocast step makes. Forward hooks check the
Linear layers ran in the autocast dtype, the recorded aten ops that the loss's
log-softmax and mean read float32, a gradient hook injects an overflow to check the step
is skipped and the scale backed off, and the recorded scaler calls check their order.

Rules: torch.amp.GradScaler (and torch.cuda.amp / torch.cpu.amp's, and any subclass) is
plain Python below the reach of the kata's modes: a profile hook around every call into
your scaler catches any call into torch's grad_scaler modules. Its fused kernels
(_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_) are forbidden in
course.toml.

Every check is deterministic (seeded data and weights, injections at fixed steps); there
is no statistical check and so no false-failure rate to state. No speed check: a step's
time is the model's.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.amp import grad_scaler as torch_grad_scaler
from torch.utils._python_dispatch import _disable_current_modes

from kata import checks, course, harness
from kata.checks import describe, expect_close, randn

TOPIC = course.get("mixed_precision")
rules = checks.Rules(TOPIC.forbidden)

FEATURES, HIDDEN, CLASSES = 6, 16, 4


@pytest.fixture(scope="module")
def mp(impl):
    return impl.load("mixed_precision")


def autocast_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cpu" else torch.float16


# ---------------------------------------------------------------- the rule on GradScaler


def _grad_scaler_files() -> set[str]:
    files = {torch_grad_scaler.__file__}
    for name in ("torch.cuda.amp.grad_scaler", "torch.cpu.amp.grad_scaler"):
        try:
            module = __import__(name, fromlist=["GradScaler"])
            files.add(module.__file__)
        except ImportError:
            pass
    return files


GRAD_SCALER_FILES = _grad_scaler_files()


def _grad_scaler_code(code) -> str | None:
    return f"torch.amp.GradScaler ({code.co_name})" if code.co_filename in GRAD_SCALER_FILES else None


def NoGradScaler() -> harness.CallWatch:
    """Around every call into the learner's scaler: torch's GradScaler code forbidden
    (however it was imported, subclassed or wrapped)."""
    return harness.CallWatch(_grad_scaler_code, ": write the scaler yourself")

def guarded(learner: bool, fn, *args, **kwargs):
    if not learner:
        return fn(*args, **kwargs)
    with NoGradScaler():
        return fn(*args, **kwargs)


@contextmanager
def bookkeeping():
    """The grader's own work inside a call sent to the executor, outside the kata's rule
    modes (torch's GradScaler runs the kernels the learner may not). Never around a call
    into the learner's code."""
    with torch._C.DisableTorchFunction(), _disable_current_modes():
        yield


# ---------------------------------------------------------------- a scaled training run (in either process)


class CountingSGD(torch.optim.SGD):
    """SGD whose step() returns how many steps it has taken: what scaler.step() must pass on."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr, foreach=False)
        self.calls = 0

    def step(self, closure=None):
        super().step(closure)
        self.calls += 1
        return float(self.calls)


SHAPES = [(4, 3), (3,), (5,)]


def initial_params(device):
    return [randn(*s, seed=10 + i, device=device, scale=0.8) for i, s in enumerate(SHAPES)]


def noise(step, device):
    return [randn(*s, seed=1000 * (i + 1) + step, device=device, scale=0.5) for i, s in enumerate(SHAPES)]


INJECT = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def scaler_run(make_scaler, init, plan, learner=False):
    """Train `plan['steps']` steps with a scaler made by make_scaler(**plan['kwargs']):
    loss = sum(0.5 * p^2 + n * p) (gradient p + n), scaled backward, injections into the
    scaled gradients, unscale_ at plan['unscale_at'], step, update. Per step: the scale,
    the growth tracker, what step() returned, whether the optimizer stepped, the parameters."""
    device = init[0].device
    with bookkeeping():
        params = [nn.Parameter(t.detach().clone()) for t in init]
        opt = CountingSGD(params, lr=0.05)
    scaler = guarded(learner, make_scaler, **plan.get("kwargs", {}))
    out = {"scale": [], "tracker": [], "returned": [], "stepped": [], "calls": [], "params": []}
    for step in range(plan["steps"]):
        with bookkeeping():
            opt.zero_grad()
            n = noise(step, device)
            loss = sum((0.5 * p * p + q * p).sum() for p, q in zip(params, n))
        scaled = guarded(learner, scaler.scale, loss)
        with bookkeeping():
            scaled.backward()
            for index, kind in plan.get("inject", {}).get(step, []):
                params[index].grad.view(-1)[0] = INJECT[kind]  # an overflowed scaled gradient
        if step in plan.get("unscale_at", ()):
            guarded(learner, scaler.unscale_, opt)
        before = opt.calls
        returned = guarded(learner, scaler.step, opt)
        guarded(learner, scaler.update)
        state = guarded(learner, scaler.state_dict)
        with bookkeeping():
            out["scale"].append(state.get("scale") if isinstance(state, dict) else None)
            out["tracker"].append(state.get("_growth_tracker") if isinstance(state, dict) else None)
            out["returned"].append(returned if returned is None or isinstance(returned, float) else repr(returned))
            out["stepped"].append(opt.calls > before)
            out["calls"].append(float(opt.calls))
            out["params"].append(torch.cat([p.detach().reshape(-1) for p in params]))
    with bookkeeping():
        out["params"] = torch.stack(out["params"])  # (steps, n_params)
        return out


# name: plan. Injections: {step: [(parameter index, "inf" | "-inf" | "nan")]}.
SCALER_CASES = {
    "defaults_one_overflow": {"kwargs": {}, "steps": 6, "inject": {2: [(0, "inf")]}},
    # Overflows in the last parameter and in the middle one, a nan and a -inf, growth
    # after every 3 clean steps: a tracker not reset, growth every step, a missing
    # backoff, found-inf read from the first parameter only, or isinf without isnan show.
    "growth_and_backoff": {
        "kwargs": {"init_scale": 2.0**10, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3},
        "steps": 16,
        "inject": {3: [(2, "inf")], 4: [(1, "nan")], 9: [(2, "-inf")], 10: [(1, "inf"), (2, "nan")]},
        "unscale_at": {5, 6, 12},
    },
    # Factors whose products are not exact: the scale rounds to float32, as torch's does.
    "custom_factors": {
        "kwargs": {"init_scale": 1000.0, "growth_factor": 3.0, "backoff_factor": 0.3, "growth_interval": 2},
        "steps": 10,
        # 1000 -> 300 -> 90 -> 27 -> 81 -> 24.3: not a float32 number, so its rounding shows.
        "inject": {1: [(2, "inf")], 2: [(0, "nan")], 3: [(1, "inf")], 6: [(0, "nan")]},
    },
    # unscale_ before every step (as when clipping): step() must not unscale again.
    "explicit_unscale_every_step": {
        "kwargs": {"init_scale": 2.0**8, "growth_interval": 2},
        "steps": 8,
        "inject": {3: [(1, "inf")]},
        "unscale_at": set(range(8)),
    },
}


def describe_plan(case):
    plan = SCALER_CASES[case]
    kwargs = ", ".join(f"{k}={v:g}" for k, v in plan["kwargs"].items())
    inject = "; ".join(f"step {s}: {', '.join(f'{k} in parameter {i}' for i, k in v)}" for s, v in plan["inject"].items())
    unscale = f"; unscale_ before step() at steps {sorted(plan['unscale_at'])}" if plan.get("unscale_at") else ""
    return f"DynamicLossScaler({kwargs}), {plan['steps']} steps of SGD, injected into the scaled gradients at {inject}{unscale}"


def run_scalers(mp, device, case):
    init = initial_params(device)
    plan = SCALER_CASES[case]
    what = describe_plan(case)
    got = rules.call(scaler_run, mp.DynamicLossScaler, init, plan, learner=True, what=what)
    want = scaler_run(lambda **kw: torch.amp.GradScaler(torch.device(device).type, **kw), init, plan)
    return got, want, what


def first_step_differing(got, want):
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b and not (a is None and b is None)), None)


@pytest.mark.parametrize("case", list(SCALER_CASES))
def test_scale_follows_grad_scaler(mp, device, case):
    """The scale after every update equals GradScaler's, exactly."""
    got, want, what = run_scalers(mp, device, case)
    i = first_step_differing(got["scale"], want["scale"])
    if i is not None:
        raise checks.Wrong(f"{what}: after step {i}'s update() the scale is {got['scale'][i]!r}; GradScaler's is {want['scale'][i]!r} "
                           f"(every earlier step matched; scales were {want['scale'][:i + 1]})")  # fmt: skip


@pytest.mark.parametrize("case", list(SCALER_CASES))
def test_growth_tracker_follows_grad_scaler(mp, device, case):
    """state_dict()['_growth_tracker'] after every update equals GradScaler's."""
    got, want, what = run_scalers(mp, device, case)
    i = first_step_differing(got["tracker"], want["tracker"])
    if i is not None:
        raise checks.Wrong(f"{what}: after step {i}'s update() the growth tracker is {got['tracker'][i]!r}; GradScaler's is "
                           f"{want['tracker'][i]!r} (trackers were {want['tracker'][:i + 1]})")  # fmt: skip


SKIP_CASES = ["defaults_one_overflow", "growth_and_backoff", "custom_factors"]


@pytest.mark.parametrize("case", SKIP_CASES)
def test_overflowed_steps_are_skipped(mp, device, case):
    """On every step whose gradients hold an inf or a nan, optimizer.step() does not run
    and scaler.step() returns None."""
    got, want, what = run_scalers(mp, device, case)
    for i, stepped in enumerate(want["stepped"]):
        if not stepped and (got["stepped"][i] or got["returned"][i] is not None):
            did = "ran optimizer.step()" if got["stepped"][i] else "skipped the step"
            raise checks.Wrong(f"{what}: at step {i}, whose gradients are not all finite, scaler.step() {did} and returned "
                               f"{got['returned'][i]!r}; expected the step skipped and None returned "
                               "(check every gradient of every parameter with torch.isfinite)")  # fmt: skip


@pytest.mark.parametrize("case", SKIP_CASES)
def test_clean_steps_are_taken(mp, device, case):
    """On every step whose gradients are all finite, optimizer.step() runs once and
    scaler.step() returns its value (the grader's SGD returns its step count)."""
    got, want, what = run_scalers(mp, device, case)
    for i, stepped in enumerate(want["stepped"]):
        if stepped and (not got["stepped"][i] or got["returned"][i] != got["calls"][i]):
            did = f"returned {got['returned'][i]!r} (optimizer.step() returned {got['calls'][i]!r})" if got["stepped"][i] else "skipped it"
            raise checks.Wrong(f"{what}: at step {i}, whose gradients are all finite, scaler.step() {did}; expected optimizer.step() "
                               "called and its value returned (is a found inf forgotten after update()?)")  # fmt: skip


@pytest.mark.parametrize("case", list(SCALER_CASES))
def test_parameters_follow_grad_scaler(mp, device, case):
    """The parameters after every step equal those of the run with GradScaler: gradients
    unscaled exactly once before each step, no step on an overflow."""
    got, want, what = run_scalers(mp, device, case)
    params = got["params"]
    checks.expect_tensor(params, shape=want["params"].shape, dtype=torch.float32, device=device, what=what)
    for step in range(len(want["params"])):
        expect_close(params[step], want["params"][step], what=f"{what}: the parameters after step {step}", dtype=torch.float32, device=device)


def scale_once(scaler_cls, loss_input, init_scale):
    """scale(loss) on a fresh scaler, and the gradient its backward gives the input."""
    scaler = guarded(True, scaler_cls, init_scale=init_scale)
    x = loss_input.detach().clone().requires_grad_()
    with bookkeeping():
        loss = (x * x).sum() * 0.5  # gradient x
    scaled = guarded(True, scaler.scale, loss)
    with bookkeeping():
        if not isinstance(scaled, torch.Tensor) or not scaled.requires_grad:
            return scaled, None, loss.detach()
        scaled.backward()
        return scaled.detach(), x.grad, loss.detach()


def test_scale_multiplies_loss_by_float32_scale(mp, device):
    """scale(loss) is loss times the scale, float32, with a graph: backward gives scale times the gradient."""
    x = randn(7, seed=3, device=device)
    what = "DynamicLossScaler(init_scale=1024).scale(loss)"
    scaled, grad, loss = rules.call(scale_once, mp.DynamicLossScaler, x, 1024.0, what=what)
    if grad is None:
        raise checks.Wrong(f"{what} returned {describe(scaled)} without autograd history; expected loss * scale, which backward can run through")
    expect_close(scaled, loss.double() * 1024, what=what, dtype=torch.float32, device=device)
    expect_close(grad, x.double() * 1024, what=f"the gradient of {what}", dtype=torch.float32, device=device)


def unscale_twice(scaler_cls):
    scaler = guarded(True, scaler_cls, init_scale=4.0)
    with bookkeeping():
        p = nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([p], lr=0.1)
        loss = p.sum()
    guarded(True, scaler.scale, loss).backward()
    guarded(True, scaler.unscale_, opt)
    try:
        guarded(True, scaler.unscale_, opt)
    except RuntimeError:
        return "raised", p.grad.detach().clone()
    return "returned", p.grad.detach().clone()


def test_second_unscale_raises(mp, device):
    """A second unscale_(optimizer) before update() raises RuntimeError (as GradScaler's
    does) instead of dividing the gradients again."""
    what = "scale(loss).backward(); unscale_(optimizer); unscale_(optimizer) again"
    outcome, grad = rules.call(unscale_twice, mp.DynamicLossScaler, what=what)
    if outcome != "raised":
        raise checks.Wrong(f"{what} did not raise (the gradients are now {grad.tolist()}, the true ones 1.0); expected RuntimeError")


def state_dicts(scaler_cls):
    scaler = guarded(True, scaler_cls, init_scale=512.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=5)
    fresh = guarded(True, scaler.state_dict)
    with bookkeeping():
        p = nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.1)
        loss = p.sum()
    guarded(True, scaler.scale, loss).backward()
    guarded(True, scaler.step, opt)
    guarded(True, scaler.update)
    return fresh, guarded(True, scaler.state_dict)


def test_state_dict_matches_grad_scalers(mp, device):
    """state_dict() has GradScaler's five keys, with Python numbers of its types and values."""
    what = "DynamicLossScaler(init_scale=512, growth_factor=4, backoff_factor=0.25, growth_interval=5).state_dict()"
    got = rules.call(state_dicts, mp.DynamicLossScaler, what=what)
    reference = torch.amp.GradScaler("cpu", init_scale=512.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=5)
    want_fresh = reference.state_dict()
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    reference.scale(p.sum()).backward()
    reference.step(opt)
    reference.update()
    for label, g, w in (("on a fresh scaler", got[0], want_fresh), ("after one clean step", got[1], reference.state_dict())):
        if not isinstance(g, dict) or set(g) != set(w):
            raise checks.Wrong(f"{what} {label} returned {g!r}; expected the keys {sorted(w)}")
        for k in w:
            if type(g[k]) is not type(w[k]) or g[k] != w[k]:
                raise checks.Wrong(f"{what} {label}: [{k!r}] is {g[k]!r} ({type(g[k]).__name__}); GradScaler's is {w[k]!r} ({type(w[k]).__name__})")


# ---------------------------------------------------------------- amp_train_step


class TorchScaler:
    """torch.amp.GradScaler for the learner's amp_train_step, outside the rule modes (its
    fused kernels are forbidden to the learner, not to the grader), its calls recorded."""

    def __init__(self, device_type, **kwargs):
        with bookkeeping():
            self.inner = torch.amp.GradScaler(device_type, **kwargs)
        self.events = []

    def scale(self, loss):
        self.events.append("scale")
        with bookkeeping():
            return self.inner.scale(loss)

    def unscale_(self, optimizer):
        self.events.append("unscale_")
        with bookkeeping():
            return self.inner.unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.events.append("step")
        with bookkeeping():
            return self.inner.step(optimizer, *args, **kwargs)

    def update(self, *args, **kwargs):
        self.events.append("update")
        with bookkeeping():
            return self.inner.update(*args, **kwargs)

    def state_dict(self):
        with bookkeeping():
            return self.inner.state_dict()


class Spy:
    """At every forward of each Linear layer: the dtype of its output and whether
    autocast was on; optionally an overflow injected into the last layer's bias gradient."""

    def __init__(self, model, device_type, inject=False):
        self.device_type = device_type
        self.forwards = []
        self.handles = [m.register_forward_hook(self._forward) for m in model.modules() if isinstance(m, nn.Linear)]
        if inject:
            last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            self.handles.append(last.bias.register_post_accumulate_grad_hook(self._overflow))

    def _forward(self, module, args, output):
        self.forwards.append((str(output.dtype).removeprefix("torch."), torch.is_autocast_enabled(self.device_type)))

    @staticmethod
    def _overflow(p):
        p.grad.view(-1)[0] = float("inf")

    def remove(self):
        for h in self.handles:
            h.remove()


def make_model(device) -> nn.Module:
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(randn(*p.shape, seed=200 + i, scale=0.6, device="cpu"))
    return model.to(device)


def make_batch(device, rows=12, seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, FEATURES, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, CLASSES, (rows,), generator=g)
    return x.to(device), y.to(device)


AMP_LR = 0.5
SCALER_KWARGS = {"init_scale": 2.0**12, "growth_interval": 2}


def reference_step(model, optimizer, batch, max_grad_norm, *, autocast, scaler=None):
    """The step amp_train_step must take, with torch's ops (autocast and GradScaler on
    the device, or neither in float64 for the golden)."""
    x, y = batch
    optimizer.zero_grad()
    with torch.autocast(x.device.type, dtype=autocast_dtype(x.device), enabled=autocast):
        loss = F.cross_entropy(model(x).float(), y)
    (scaler.scale(loss) if scaler else loss).backward()
    if max_grad_norm is not None:
        if scaler:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.item()


AMP_CASES = {"plain": None, "clipping_bites": 0.05}


def run_amp(mp, device, max_grad_norm, *, stale=False, inject=False):
    device = torch.device(device)
    model = make_model(device)
    before = [p.detach().clone() for p in model.parameters()]
    gold = copy.deepcopy(model).to("cpu", torch.float64)
    base = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=AMP_LR)
    if stale:
        for i, p in enumerate(model.parameters()):
            # In the scaled gradients' units (x 4096), as an unscaled leftover would be.
            p.grad = randn(*p.shape, seed=300 + i, scale=2.0**14, device=device)
    x, y = make_batch(device)
    model, optimizer = checks.place(mp, model, optimizer)
    scaler = checks.run_in(mp, TorchScaler, device.type, **SCALER_KWARGS)
    spy = rules.call(Spy, model, device.type, inject)
    dtype = autocast_dtype(device)
    what = (f"amp_train_step(model, SGD(lr={AMP_LR}), GradScaler(init_scale=4096), (float32 {tuple(x.shape)}, int64 {tuple(y.shape)}), "
            f"device_type={device.type!r}, dtype={dtype}, max_grad_norm={max_grad_norm})")  # fmt: skip
    if stale:
        what += " with stale gradients in .grad on entry"
    if inject:
        what += " with an inf injected into a gradient"
    try:
        loss = rules.call(mp.amp_train_step, model, optimizer, scaler, (x.clone(), y.clone()), what=what,
                          device_type=device.type, dtype=dtype, max_grad_norm=max_grad_norm)  # fmt: skip
    finally:
        spy.remove()
    want_loss = reference_step(gold, torch.optim.SGD(gold.parameters(), lr=AMP_LR), (x.cpu().double(), y.cpu()), max_grad_norm, autocast=False)
    base_scaler = torch.amp.GradScaler(device.type, **SCALER_KWARGS)
    base_spy = Spy(base, device.type, inject)
    base_loss = reference_step(base, torch.optim.SGD(base.parameters(), lr=AMP_LR), (x, y), max_grad_norm, autocast=True, scaler=base_scaler)
    base_spy.remove()
    return SimpleNamespace(model=model, before=before, gold=gold, base=base, loss=loss, want_loss=want_loss, base_loss=base_loss,
                           scaler=scaler, base_scaler=base_scaler, spy=spy, what=what, dtype=dtype, x=x, y=y)  # fmt: skip


def expect_update_matches(r, device):
    """Each parameter's change in the step against the float64 step's, within the autocast
    dtype's tolerance plus 4x torch's own autocast step's error."""
    for (name, p), p0, g, b in zip(r.model.named_parameters(), r.before, r.gold.parameters(), r.base.parameters()):
        got = p.detach().double().cpu() - p0.double().cpu()
        want = g.detach() - p0.double().cpu()
        base = b.detach().double().cpu() - p0.double().cpu()
        expect_close(got.to(r.dtype), want, what=f"the update of {name} by {r.what}", dtype=r.dtype, device="cpu", baseline=base)


@pytest.mark.parametrize("case", list(AMP_CASES))
def test_amp_step_matches_torch(mp, device, case):
    """The parameters' update and the returned loss equal one float64 step's, within the
    autocast dtype's tolerance (true gradients clipped, unscaled once)."""
    r = run_amp(mp, device, AMP_CASES[case])
    if isinstance(r.loss, torch.Tensor) or not isinstance(r.loss, float):
        raise checks.Wrong(f"{r.what} returned {describe(r.loss)} ({type(r.loss).__name__}); expected the loss as a Python float")
    expect_close(torch.tensor(r.loss, dtype=torch.float64).to(r.dtype), torch.tensor(r.want_loss, dtype=torch.float64),
                 what=f"the loss {r.what} returned", dtype=r.dtype, device="cpu", baseline=torch.tensor(r.base_loss, dtype=torch.float64))  # fmt: skip
    expect_update_matches(r, device)


def test_amp_step_clears_stale_gradients(mp, device):
    """Gradients left in .grad before the step do not leak into it."""
    r = run_amp(mp, device, None, stale=True)
    expect_update_matches(r, device)


def test_amp_step_runs_forward_under_autocast(mp, device):
    """Every Linear layer runs once, under autocast, returning the autocast dtype."""
    r = run_amp(mp, device, None)
    want = [(str(r.dtype).removeprefix("torch."), True)] * 2
    if r.spy.forwards != want:
        raise checks.Wrong(
            f"{r.what}: the model's Linear layers returned (dtype, autocast on) {r.spy.forwards}; expected {want}: "
            f"run model(inputs) once, inside torch.autocast({r.x.device.type!r}, dtype={r.dtype})"
        )


def test_amp_step_skips_on_overflow(mp, device):
    """An inf in a gradient: no parameter changes, and update() backs the scale off."""
    r = run_amp(mp, device, 0.05, inject=True)
    for (name, p), p0 in zip(r.model.named_parameters(), r.before):
        if not torch.equal(p.detach().cpu(), p0.cpu()):
            raise checks.Wrong(f"{r.what} changed parameter {name}; the step must be skipped (scaler.step(optimizer), not optimizer.step())")
    got, want = r.scaler.state_dict(), r.base_scaler.state_dict()
    if got != want:
        raise checks.Wrong(f"after {r.what}, the scaler's state is {got}; expected {want}: call scaler.update() after scaler.step()")


@pytest.mark.parametrize("case", list(AMP_CASES))
def test_amp_step_calls_the_scaler_in_order(mp, device, case):
    """scale, (unscale_ when clipping), step, update: each once, in that order."""
    r = run_amp(mp, device, AMP_CASES[case])
    want = ["scale", "unscale_", "step", "update"] if AMP_CASES[case] is not None else ["scale", "step", "update"]
    if r.scaler.events != want:
        raise checks.Wrong(f"{r.what} called the scaler's {', '.join(r.scaler.events) or 'nothing'}; expected {', '.join(want)}")


def with_grad(step, *args, **kwargs):
    """step(*args, **kwargs) with autograd on: record_ops runs under no_grad."""
    with torch.enable_grad():
        return step(*args, **kwargs)


LOSS_OPS = ("aten._log_softmax", "aten.log_softmax", "aten.nll_loss_forward", "aten.nll_loss", "aten.logsumexp")


def test_amp_step_loss_in_float32(mp, device):
    """The loss's log-softmax and its mean (nll_loss) read and return float32, not the half-precision logits."""
    device = torch.device(device)
    model = make_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=AMP_LR)
    x, y = make_batch(device)
    model, optimizer = checks.place(mp, model, optimizer)
    scaler = checks.run_in(mp, TorchScaler, device.type, **SCALER_KWARGS)
    dtype = autocast_dtype(device)
    ops = rules.record_ops(with_grad, mp.amp_train_step, model, optimizer, scaler, (x, y), device_type=device.type, dtype=dtype, max_grad_norm=None)
    seen = [op for op in ops if op.name in LOSS_OPS]
    if not seen:
        raise checks.Wrong(f"amp_train_step(..., device_type={device.type!r}, dtype={dtype}) ran no log-softmax: use F.cross_entropy")
    for op in seen:
        half = [str(t.dtype).removeprefix("torch.") for t in (*op.inputs, *op.outputs) if t.dtype in checks.HALF]
        if half:
            raise checks.Wrong(
                f"amp_train_step(..., dtype={dtype}) runs {op.name} on {half[0]} tensors: compute the loss in float32 "
                "(F.cross_entropy(logits.float(), targets)), inside autocast or outside it"
            )
