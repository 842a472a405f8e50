"""Grader for the schedulers kata: warmup_cosine, linear_warmup_decay and WarmupCosine.

The two functions are compared with their float64 formula at every step from 0 to
total_steps + 10, reported by region so a mistake shows where it is: step 0, inside the
warm-up, the warm-up's last step and the first step after it, inside the decay, and from
total_steps on; on schedules with and without warm-up, a min_lr, and warm-up to the very
end. WarmupCosine drives an optimizer's param groups for total_steps + 10 steps,
compared after construction and after every step with torch's own LambdaLR running the
same schedule (the grader's formula), with one and two param groups; get_last_lr(); and a
run resumed from state_dicts (saved with torch.save, loaded with weights_only=True into a
fresh optimizer and scheduler) at steps inside the warm-up, at its end, inside the decay
and at the end. Rules: a subclass of LRScheduler and of no concrete torch scheduler, and
no concrete scheduler's code run (a profile hook around every call into the learner's
scheduler); the return types; ValueError for impossible schedules. Nothing is random, so
there is no statistical check.
"""

from __future__ import annotations

import inspect
import io
import math

import pytest
import torch
from torch.optim import Optimizer, lr_scheduler

from kata import checks, course, harness
from kata.checks import RuleBroken

TOPIC = course.get("schedulers")
rules = checks.Rules(TOPIC.forbidden)
FUNCTIONS = ["warmup_cosine", "linear_warmup_decay"]


@pytest.fixture(scope="module")
def sched(impl):
    return impl.load("schedulers")


# ---------------------------------------------------------------- the formulas, in float64


def cosine_formula(step, *, warmup_steps, total_steps, base_lr, min_lr=0.0):
    w, t = warmup_steps, total_steps
    if step >= t:
        return min_lr
    if step < w:
        return base_lr * (step + 1) / w
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - w) / (t - w)))


def linear_formula(step, *, warmup_steps, total_steps, base_lr):
    w, t = warmup_steps, total_steps
    if step >= t:
        return 0.0
    if step < w:
        return base_lr * (step + 1) / w
    return base_lr * (t - step) / (t - w)


FORMULA = {"warmup_cosine": cosine_formula, "linear_warmup_decay": linear_formula}

# Schedules: (warmup_steps, total_steps, base_lr, min_lr); min_lr only for warmup_cosine.
SCHEDULES = {
    "warmup=10,total=50": (10, 50, 0.1, 0.0),
    "min_lr=0.01": (10, 50, 0.1, 0.01),
    # No warm-up: step 0 is base_lr, and warm-up code must not divide by W = 0.
    "no_warmup": (0, 20, 3e-4, 0.0),
    "warmup=1": (1, 8, 1.0, 0.0),
    # Warm-up to the very end: no decay steps at all, and T - W = 0 must not be divided by.
    "warmup=total": (6, 6, 0.5, 0.0),
}


def kwargs_of(fn: str, schedule: str) -> dict:
    w, t, base, low = SCHEDULES[schedule]
    kwargs = {"warmup_steps": w, "total_steps": t, "base_lr": base}
    return kwargs | {"min_lr": low} if fn == "warmup_cosine" else kwargs


REGIONS = {
    "step 0": lambda w, t: [0],
    "inside the warm-up": lambda w, t: list(range(1, w - 1)),
    "the end of the warm-up": lambda w, t: sorted({s for s in (w - 1, w) if s >= 0}),
    "inside the decay": lambda w, t: list(range(w + 1, t)),
    "total_steps and after": lambda w, t: list(range(t, t + 11)),
}


def region_cases(region: str) -> list:
    """(fn, schedule) pairs for which the region holds steps (min_lr only for warmup_cosine)."""
    cases = []
    for fn in FUNCTIONS:
        for name, (w, t, _, low) in SCHEDULES.items():
            if (low and fn != "warmup_cosine") or not REGIONS[region](w, t):
                continue
            cases.append(pytest.param(fn, name, id=f"{fn}-{name}"))
    return cases


def lr_table(fn, steps, kwargs):
    """fn(step, **kwargs) for every step, in the executor (one request for the whole table)."""
    return [fn(step, **kwargs) for step in steps]


def close(got, want) -> bool:
    return isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) <= 1e-12 * abs(want) + 1e-15


def expect_schedule(sched, fn: str, schedule: str, region: str) -> None:
    kwargs = kwargs_of(fn, schedule)
    w, t = kwargs["warmup_steps"], kwargs["total_steps"]
    steps = REGIONS[region](w, t)
    what = f"{fn}(step, {', '.join(f'{k}={v:g}' for k, v in kwargs.items())})"
    got = rules.call(lr_table, getattr(sched, fn), steps, kwargs, what=what)
    for step, value in zip(steps, got):
        want = FORMULA[fn](step, **kwargs)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()  # the type is test_returns_a_python_float's business
        if not close(value, want):
            raise checks.Wrong(
                f"{what} at step {step} ({region}; W={w}, T={t}) returned {value!r}, expected {want!r}"
                + ("" if len(steps) == 1 else f" (steps {steps[0]}..{steps[-1]} checked, the first wrong one shown)")
            )


@pytest.mark.parametrize("fn, schedule", region_cases("step 0"))
def test_lr_at_step_0(sched, fn, schedule):
    """Step 0 trains at base_lr / W (base_lr without warm-up), not at 0."""
    expect_schedule(sched, fn, schedule, "step 0")


@pytest.mark.parametrize("fn, schedule", region_cases("inside the warm-up"))
def test_lr_during_warmup(sched, fn, schedule):
    """Steps 1 .. W - 2: base_lr * (step + 1) / W."""
    expect_schedule(sched, fn, schedule, "inside the warm-up")


@pytest.mark.parametrize("fn, schedule", region_cases("the end of the warm-up"))
def test_lr_at_warmup_end(sched, fn, schedule):
    """Steps W - 1 and W: both base_lr (the warm-up's last step, the decay's first)."""
    expect_schedule(sched, fn, schedule, "the end of the warm-up")


@pytest.mark.parametrize("fn, schedule", region_cases("inside the decay"))
def test_lr_during_decay(sched, fn, schedule):
    """Steps W + 1 .. T - 1: the decay spans T - W steps and ends at min_lr (or 0)."""
    expect_schedule(sched, fn, schedule, "inside the decay")


@pytest.mark.parametrize("fn, schedule", region_cases("total_steps and after"))
def test_lr_from_total_steps_on(sched, fn, schedule):
    """Steps T .. T + 10: min_lr (0 for linear_warmup_decay), never climbing back or going negative."""
    expect_schedule(sched, fn, schedule, "total_steps and after")


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_returns_a_python_float(sched, fn):
    """A Python number at every step (a tensor lr would turn every param group's lr into one)."""
    kwargs = kwargs_of(fn, "warmup=10,total=50")
    steps = [0, 5, 10, 30, 50, 55]
    what = f"{fn}(step, {', '.join(f'{k}={v:g}' for k, v in kwargs.items())})"
    for step, value in zip(steps, rules.call(lr_table, getattr(sched, fn), steps, kwargs, what=what)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise checks.Wrong(f"{what} at step {step} returned {checks.describe(value)}; expected a Python float (use math, not torch)")


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("warmup, total", [(-1, 10), (0, 0), (11, 10)], ids=["negative_warmup", "total=0", "warmup>total"])
def test_rejects_invalid_schedule(sched, fn, warmup, total):
    kwargs = {"warmup_steps": warmup, "total_steps": total, "base_lr": 0.1}
    what = f"{fn}(0, warmup_steps={warmup}, total_steps={total}, base_lr=0.1)"
    rules.expect_raises(ValueError, getattr(sched, fn), 0, what=what, **kwargs)


# ---------------------------------------------------------------- the scheduler's rules


def _concrete_scheduler_code() -> dict:
    """The code objects of every concrete torch scheduler's own methods (LambdaLR.get_lr,
    CosineAnnealingLR.__init__, ...), by name: LRScheduler's own are the learner's to use."""
    found = {}
    for name, cls in vars(lr_scheduler).items():
        if not inspect.isclass(cls) or not issubclass(cls, lr_scheduler.LRScheduler) or cls.__module__ != lr_scheduler.__name__:
            continue
        if cls in (lr_scheduler.LRScheduler, getattr(lr_scheduler, "_LRScheduler", None)):
            continue
        for attr, fn in vars(cls).items():
            fn = inspect.unwrap(getattr(fn, "__func__", fn))
            if inspect.isfunction(fn):
                found[fn.__code__] = f"torch.optim.lr_scheduler.{name}.{attr}"
    return found


CONCRETE_SCHEDULER_CODE = _concrete_scheduler_code()


def SchedulerWatch(on: bool) -> harness.CallWatch:
    """Around the learner's scheduler calls: a concrete torch scheduler's code forbidden (a
    LambdaLR built and stepped inside WarmupCosine)."""
    return harness.CallWatch(CONCRETE_SCHEDULER_CODE.get, " (a torch scheduler's own code): compute the rates from warmup_cosine in get_lr", on)

def expect_plain_scheduler(scheduler) -> None:
    if not isinstance(scheduler, lr_scheduler.LRScheduler):
        raise checks.Wrong(f"WarmupCosine is a {type(scheduler).__name__}, not a torch.optim.lr_scheduler.LRScheduler subclass")
    base = (lr_scheduler.LRScheduler, getattr(lr_scheduler, "_LRScheduler", None))
    concrete = [c for c in type(scheduler).__mro__ if c.__module__ == lr_scheduler.__name__ and c not in base]
    if concrete:
        raise RuleBroken(f"{type(scheduler).__name__} subclasses torch.optim.lr_scheduler.{concrete[0].__qualname__}, which this "
                         "kata forbids: subclass LRScheduler and write get_lr")  # fmt: skip


# ---------------------------------------------------------------- a scheduled run (in either process)

PLANS = {
    "one_group": {"lrs": [0.1], "warmup_steps": 5, "total_steps": 30, "min_lr": 0.0},
    # Different base lrs and an absolute floor: each group follows its own base lr.
    "two_groups_min_lr": {"lrs": [0.1, 0.02], "warmup_steps": 5, "total_steps": 30, "min_lr": 0.001},
    "no_warmup": {"lrs": [0.05], "warmup_steps": 0, "total_steps": 12, "min_lr": 0.0},
}


class StillOptimizer(Optimizer):
    """An optimizer whose step() changes nothing: the rates, not the updates, are graded. A
    torch optimizer's step() would import torch._dynamo (about 1 s) in every grading."""

    def __init__(self, groups):
        super().__init__(groups, {})

    def step(self, closure=None):
        return None


def build(make, plan, learner):
    """A fresh optimizer with one small parameter per group (lr = the group's base lr) and make(opt, W, T, min_lr)."""
    opt = StillOptimizer([{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in plan["lrs"]])
    with SchedulerWatch(learner):
        scheduler = make(opt, plan["warmup_steps"], plan["total_steps"], plan["min_lr"])
    if learner:
        expect_plain_scheduler(scheduler)
    return opt, scheduler


def run_schedule(make, plan, learner=False):
    """Every group's lr and get_last_lr() after construction and after each of plan["steps"]
    (default total_steps + 10) optimizer and scheduler steps; with plan["resume_at"] = r, both state_dicts are saved after
    r steps (torch.save, torch.load(weights_only=True)) and loaded into a fresh optimizer and
    scheduler, built in that order, and the run continues with them."""
    opt, scheduler = build(make, plan, learner)

    def record(into_lrs, into_last):
        into_lrs.append([float(g["lr"]) for g in opt.param_groups])
        with SchedulerWatch(learner):
            last = scheduler.get_last_lr()
        into_last.append([float(v) for v in last])

    lrs, last = [], []
    record(lrs, last)
    for step in range(1, plan.get("steps", plan["total_steps"] + 10) + 1):
        if step - 1 == plan.get("resume_at"):
            buffer = io.BytesIO()
            with SchedulerWatch(learner):
                saved = {"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}
            torch.save(saved, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            opt, scheduler = build(make, plan, learner)
            opt.load_state_dict(saved["optimizer"])
            with SchedulerWatch(learner):
                scheduler.load_state_dict(saved["scheduler"])
        opt.step()  # nothing moves, but LRScheduler sees the optimizer step first
        with SchedulerWatch(learner):
            scheduler.step()
        record(lrs, last)
    return {"lrs": lrs, "last": last}


def lambda_lr(plan):
    """torch's LambdaLR with the grader's formula: lr = base * lambda(n), one lambda per group."""

    def make(opt, warmup_steps, total_steps, min_lr):
        lambdas = [
            (lambda n, b=b: cosine_formula(n, warmup_steps=warmup_steps, total_steps=total_steps, base_lr=b, min_lr=min_lr) / b)
            for b in plan["lrs"]
        ]  # fmt: skip
        return lr_scheduler.LambdaLR(opt, lambdas)

    return make


def describe_plan(plan) -> str:
    lrs = ", ".join(f"{lr:g}" for lr in plan["lrs"])
    text = (f"WarmupCosine(an optimizer with {len(plan['lrs'])} param group{'s' * (len(plan['lrs']) > 1)} of lr {lrs}, "
            f"warmup_steps={plan['warmup_steps']}, total_steps={plan['total_steps']}, min_lr={plan['min_lr']:g})")  # fmt: skip
    if "resume_at" in plan:
        text += f", resumed from its state_dict after step {plan['resume_at']}"
    return text


def expect_same_lrs(got, want, *, what, source):
    """got[n] and want[n]: every group's rates after n steps (n = 0 right after construction)."""
    for n, (g, w) in enumerate(zip(got, want)):
        if len(g) != len(w) or not all(close(a, b) for a, b in zip(g, w)):
            when = "right after construction" if n == 0 else f"after {n} step{'s' * (n > 1)}"
            raise checks.Wrong(f"{what}: {source} {when} is {g}, expected {w} (LambdaLR with the same schedule; every earlier step matched)")


def run_both(sched, plan):
    what = describe_plan(plan)
    got = rules.call(run_schedule, sched.WarmupCosine, plan, learner=True, what=what)
    want = run_schedule(lambda_lr(plan), {k: v for k, v in plan.items() if k != "resume_at"})
    return got, want, what


def test_scheduler_is_an_lr_scheduler(sched):
    """A subclass of LRScheduler and of no concrete torch scheduler; no torch scheduler's code run."""
    plan = {**PLANS["one_group"], "steps": 3}
    rules.call(run_schedule, sched.WarmupCosine, plan, learner=True, what=describe_plan(plan))


@pytest.mark.parametrize("case", list(PLANS))
def test_scheduler_sets_the_step_0_rate_on_construction(sched, case):
    """Right after WarmupCosine(optimizer, ...) every group's lr is its step-0 rate, as LambdaLR sets it."""
    got, want, what = run_both(sched, {**PLANS[case], "steps": 0})
    expect_same_lrs(got["lrs"], want["lrs"], what=what, source="param_groups' lr")


@pytest.mark.parametrize("case", list(PLANS))
def test_scheduler_matches_lambda_lr(sched, case):
    """Every group's lr, after construction and after each of T + 10 steps, equal to LambdaLR's."""
    got, want, what = run_both(sched, PLANS[case])
    expect_same_lrs(got["lrs"], want["lrs"], what=what, source="param_groups' lr")


def test_scheduler_get_last_lr(sched):
    """get_last_lr() is the rates just set, after construction and after every step."""
    got, want, what = run_both(sched, PLANS["two_groups_min_lr"])
    expect_same_lrs(got["last"], want["lrs"], what=what, source="get_last_lr()")


@pytest.mark.parametrize("resume_at", [3, 5, 17, 30], ids=lambda r: f"after_step_{r}")
def test_scheduler_resumes_from_state_dict(sched, resume_at):
    """Saved after 3 steps (warm-up), 5 (its end), 17 (decay) and 30 (the end), loaded into a
    fresh optimizer and scheduler: the same rates as a run never interrupted."""
    got, want, what = run_both(sched, {**PLANS["two_groups_min_lr"], "resume_at": resume_at})
    expect_same_lrs(got["lrs"], want["lrs"], what=what, source="param_groups' lr")
