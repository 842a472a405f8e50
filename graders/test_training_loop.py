"""Grader for the training_loop kata: clip_grad_norm, train_epoch, evaluate, and
save_checkpoint / load_checkpoint with exact resume.

clip_grad_norm is compared with torch.nn.utils.clip_grad_norm_ on float64 copies (the
total norm and every clipped gradient; float32 tolerances widened by 4x torch's own float32
error), on a list, one tensor, a generator, gradients that are None, tiny gradients where
torch's 1e-6 matters, a norm under the limit, float64; the gradients must be scaled in
place. train_epoch and evaluate are compared with the same loop written with torch's ops
on a float64 copy of the model (parameters after the epoch, the returned sample-mean
loss), and a spy in the executor records, at every forward, every module's mode and
whether autograd is on, and at every optimizer step the learning rate it uses. The
checkpoint checks run, on the CPU, two epochs straight and one epoch + your checkpoint +
fresh objects loaded from it + a second epoch, with dropout and a shuffling DataLoader
(generator=), and compare, bit for bit, what your load restored with what was saved and
the two runs' final parameters.

Rules: torch.nn.utils.clip_grad_norm_ (and clip_grad_norm, get_total_norm,
clip_grads_with_norm_) are plain Python, below the reach of the kata's function and
dispatch modes: a profile hook around every call into your code catches them (as the
optimizers grader catches torch.optim's step functions). Inputs (the batch tensors, the
parameters given to clip_grad_norm) must not be modified.

Every check is deterministic: the data, models and generators are seeded, and each check
starts from the same global seed. There is no statistical check, so no false-failure
rate to state. There is no speed check: an epoch's time is the model's; the lesson is the
order of the steps and what a checkpoint must hold.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import tempfile
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad as torch_clip_grad
from torch.utils._python_dispatch import _disable_current_modes

from kata import checks, course, harness
from kata.checks import describe, expect_close, golden, randn

TOPIC = course.get("training_loop")
rules = checks.Rules(TOPIC.forbidden)

FEATURES, HIDDEN, CLASSES = 6, 16, 4


@pytest.fixture(scope="module")
def tl(impl):
    return impl.load("training_loop")


# ---------------------------------------------------------------- the rule on torch's clipping


def _forbidden_clipping() -> dict:
    """The code objects of torch's own norm clipping, by name (however imported or bound)."""
    found = {}
    for name in ("clip_grad_norm_", "clip_grad_norm", "_get_total_norm", "_clip_grads_with_norm_"):
        fn = getattr(torch_clip_grad, name, None)
        if fn is not None:
            found[inspect.unwrap(fn).__code__] = f"torch.nn.utils.{name.lstrip('_')}"
    return found


FORBIDDEN_CLIPPING = _forbidden_clipping()


def NoTorchClip() -> harness.CallWatch:
    """Around every call into the learner's code: torch's own gradient-norm clipping forbidden."""
    return harness.CallWatch(FORBIDDEN_CLIPPING.get, ": write clip_grad_norm yourself and use it")

def guarded(fn, *args, **kwargs):
    """fn(*args, **kwargs) in the executor, with torch's clipping forbidden."""
    with NoTorchClip():
        return fn(*args, **kwargs)


@contextmanager
def bookkeeping():
    """The grader's own work inside a call sent to the executor (building objects, the
    reference epochs, recording state), outside the kata's rule modes and their per-op
    cost. Never around a call into the learner's code."""
    with torch._C.DisableTorchFunction(), _disable_current_modes():
        yield


# ---------------------------------------------------------------- clip_grad_norm

# name: (gradient shapes (None: that parameter's .grad is None), scale, max_norm, how passed, dtype)
CLIP_CASES = {
    "clipping_bites": ([(4, 3), (3,), (2, 2, 2)], 1.0, 0.5, "list", torch.float32),
    "norm_under_the_limit": ([(4, 3), (3,), (2, 2, 2)], 1.0, 100.0, "list", torch.float32),
    "one_tensor": ([(5, 4)], 1.0, 0.3, "tensor", torch.float32),
    "generator_of_parameters": ([(4, 3), (3,), (2, 2, 2)], 1.0, 0.5, "generator", torch.float32),
    "some_grads_none": ([(4, 3), None, (6,), None], 1.0, 0.5, "list", torch.float32),
    # Gradients of norm ~5e-7 (2^-23 scale, so rescaling them is exact): torch's 1e-6 in
    # max_norm / (norm + 1e-6) changes the coefficient threefold.
    "tiny_gradients": ([(4, 3), (3,), (2, 2, 2)], 2.0**-23, 2.0**-23, "list", torch.float32),
    "float64": ([(4, 3), (3,), (2, 2, 2)], 1.0, 0.5, "list", torch.float64),
}


def clip_params(case, device):
    shapes, scale, _, _, dtype = CLIP_CASES[case]
    params = []
    for i, shape in enumerate(shapes):
        p = nn.Parameter(randn(*(shape or (3,)), seed=40 + i, device=device, dtype=dtype))
        p.grad = None if shape is None else randn(*shape, seed=60 + i, device=device, dtype=dtype, scale=0.4 * scale)
        params.append(p)
    return params


def clip_in_executor(clip, params, max_norm, how):
    """The learner's clip_grad_norm on params (passed as a list, one tensor or a generator),
    in the executor: the norm, the gradients after, and whether each .grad is still the
    same tensor, in the same memory."""
    before = [(id(p.grad), p.grad.data_ptr()) if p.grad is not None else None for p in params]
    arg = params[0] if how == "tensor" else (p for p in params) if how == "generator" else list(params)
    norm = guarded(clip, arg, max_norm)
    with bookkeeping():
        same = [b is None or (p.grad is not None and (id(p.grad), p.grad.data_ptr()) == b) for p, b in zip(params, before)]
        return norm, [None if p.grad is None else p.grad.detach().clone() for p in params], same


def torch_clip(params, max_norm, dtype):
    """torch's clip_grad_norm_ on copies of params in dtype, on the CPU: (norm, grads)."""
    copies = []
    for p in params:
        c = nn.Parameter(p.detach().to("cpu", dtype, copy=True))
        c.grad = None if p.grad is None else p.grad.detach().to("cpu", dtype, copy=True)
        copies.append(c)
    norm = nn.utils.clip_grad_norm_(copies, max_norm)
    return norm, [c.grad for c in copies]


def run_clip(tl, device, case):
    shapes, scale, max_norm, how, dtype = CLIP_CASES[case]
    params = clip_params(case, device)
    what = f"clip_grad_norm({how} of gradients {[s for s in shapes] if how != 'tensor' else shapes[0]} ({str(dtype)[6:]}), max_norm={max_norm:g})"
    norm, grads, same = rules.call(clip_in_executor, tl.clip_grad_norm, params, max_norm, how, what=what)
    want_norm, want_grads = torch_clip(params, max_norm, torch.float64)
    base_norm, base_grads = torch_clip(params, max_norm, dtype)
    return SimpleNamespace(norm=norm, grads=grads, same=same, want_norm=want_norm, want_grads=want_grads,
                           base_norm=base_norm, base_grads=base_grads, what=what, dtype=dtype, scale=scale)  # fmt: skip


def expect_scaled_close(got, want, base, *, scale, what, dtype, device):
    """expect_close on values divided by `scale` (a power of 2: exact), so that tiny
    gradients are compared relative to their size rather than within float32's atol."""
    checks.expect_tensor(got, shape=want.shape, dtype=dtype, device=device, what=what)
    expect_close(got / scale, want / scale, what=what, dtype=dtype, device=device, baseline=base.detach().cpu() / scale)


@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_clip_matches_torch(tl, device, case):
    """The total norm returned and every gradient after clipping equal torch's clip_grad_norm_'s."""
    r = run_clip(tl, device, case)
    if not isinstance(r.norm, torch.Tensor) or r.norm.dim() != 0:
        raise checks.Wrong(f"{r.what} returned {describe(r.norm)}; expected the total norm as a 0-dim tensor")
    expect_scaled_close(r.norm, r.want_norm, r.base_norm, scale=r.scale, what=f"the total norm {r.what} returned",
                        dtype=r.dtype, device=device)  # fmt: skip
    for i, (g, w, b) in enumerate(zip(r.grads, r.want_grads, r.base_grads)):
        if w is None:
            if g is not None:
                raise checks.Wrong(f"after {r.what}, parameter {i}'s .grad is {describe(g)}; it was None and must stay None")
            continue
        expect_scaled_close(g, w, b, scale=r.scale, what=f"parameter {i}'s .grad after {r.what}", dtype=r.dtype, device=device)


def test_clip_without_gradients_returns_zero(tl, device):
    """With no gradient at all (every .grad None), nothing to clip: torch returns tensor(0.)."""
    params = [nn.Parameter(randn(3, 2, seed=1, device=device)), nn.Parameter(randn(4, seed=2, device=device))]
    what = "clip_grad_norm([parameters whose .grad is None], max_norm=1.0)"
    norm, grads, _ = rules.call(clip_in_executor, tl.clip_grad_norm, params, 1.0, "list", what=what)
    if not isinstance(norm, torch.Tensor) or norm.dim() != 0 or norm.dtype != torch.float32 or float(norm) != 0.0:
        raise checks.Wrong(f"{what} returned {describe(norm)}; expected torch.tensor(0.0), as torch's clip_grad_norm_ does")
    if any(g is not None for g in grads):
        raise checks.Wrong(f"{what} gave a parameter a .grad; a .grad that is None must stay None")


@pytest.mark.parametrize("case", ["clipping_bites", "some_grads_none"])
def test_clip_scales_gradients_in_place(tl, device, case):
    """Each .grad is scaled in place: after the call p.grad is the same tensor, in the same memory."""
    r = run_clip(tl, device, case)
    moved = [i for i, s in enumerate(r.same) if not s]
    if moved:
        raise checks.Wrong(
            f"after {r.what}, the .grad of parameters {moved} is a new tensor: scale the gradients in place "
            "(g.mul_(coef)), as torch does; optimizers, hooks and gradient buckets may hold the old one"
        )


# ---------------------------------------------------------------- models and data


def make_model(device, *, dropout: float = 0.0) -> nn.Module:
    """A small seeded classifier (N, 6) -> (N, 4), with a dropout layer when asked."""
    layers = [nn.Linear(FEATURES, HIDDEN), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(HIDDEN, CLASSES))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(randn(*p.shape, seed=200 + i, scale=0.6, device="cpu"))
    return model.to(device)


def make_data(n, seed, device):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, FEATURES, generator=g, dtype=torch.float64).float()
    targets = torch.randint(0, CLASSES, (n,), generator=g)
    return inputs.to(device), targets.to(device)


def make_batches(sizes, seed, device):
    inputs, targets = make_data(sum(sizes), seed, device)
    return [(x, y) for x, y in zip(inputs.split(sizes), targets.split(sizes))]


LEARNING_RATES = {"sgd": 0.3, "adamw": 0.05}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=LEARNING_RATES["sgd"], momentum=0.9),
    # A large eps keeps Adam's first update a smooth function of the gradient (see
    # grad_accumulation's grader): two correct summation orders cannot flip its sign.
    "adamw": lambda params: torch.optim.AdamW(params, lr=LEARNING_RATES["adamw"], eps=1e-3, weight_decay=0.1),
}
SCHEDULERS = {
    None: lambda opt: None,
    # Decays every 2 batches: a per-epoch (or missing) step keeps the lr constant.
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
}


def loader_in_executor(inputs, targets, batch_size):
    """A DataLoader over the data, made in the executor (where it is iterated), in order."""
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=batch_size)


# ---------------------------------------------------------------- the reference loop


def reference_epoch(model, optimizer, batches, *, max_grad_norm=None, scheduler=None) -> float:
    """The epoch train_epoch must reproduce, with torch's own ops (and torch's clipping)."""
    model.train()
    total, count = 0.0, 0
    for inputs, targets in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * targets.shape[0]
        count += targets.shape[0]
    return total / count


def reference_eval(model, batches) -> float:
    was = {m: m.training for m in model.modules()}
    model.eval()
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x), y).item() * y.shape[0] for x, y in batches)
    for m, t in was.items():
        m.training = t
    return total / sum(y.shape[0] for _, y in batches)


def reference_copies(model, optimizer_name, scheduler_name):
    """(model, optimizer, scheduler) for torch's reference: a float64 CPU copy (golden)
    and a float32 copy (baseline, for the tolerance), taken before the learner's code runs."""
    out = []
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to("cpu", dtype)
        opt = OPTIMIZERS[optimizer_name](m.parameters())
        out.append((m, opt, SCHEDULERS[scheduler_name](opt)))
    return out


# ---------------------------------------------------------------- watching the learner


class Watch:
    """Records, at every forward of the model, every module's mode, whether autograd was
    on and whether the output has a graph; at every optimizer step, the learning rate."""

    def __init__(self, model, optimizer=None):
        self.forwards, self.lrs = [], []
        self.modules = list(model.modules())
        self.handles = [model.register_forward_hook(self._forward)]
        if optimizer is not None:
            self.handles.append(optimizer.register_step_pre_hook(self._step))

    def _forward(self, module, args, output):
        self.forwards.append({
            "modes": [m.training for m in self.modules],
            "grad_enabled": torch.is_grad_enabled(),
            "graph": isinstance(output, torch.Tensor) and output.requires_grad,
            "rows": int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) else -1,
        })  # fmt: skip

    def _step(self, optimizer, args, kwargs):
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def remove(self):
        for h in self.handles:
            h.remove()


@contextmanager
def watching(model, optimizer=None):
    watch = rules.call(Watch, model, optimizer)
    try:
        yield watch
    finally:
        watch.remove()


# ---------------------------------------------------------------- train_epoch

# name: (batch sizes, optimizer, scheduler, max_grad_norm, loader kind)
EPOCH_CASES = {
    "sgd_uneven_last_batch": ([4, 4, 4, 2], "sgd", None, None, "list"),
    "adamw_with_scheduler": ([4, 4, 4, 4, 3], "adamw", "step", None, "list"),
    "clipping_bites": ([4, 4, 4, 2], "sgd", None, 0.05, "list"),
    "dataloader_with_clipping_and_scheduler": ([5, 5, 5, 3], "adamw", "step", 0.05, "dataloader"),
}


def describe_epoch(case):
    sizes, opt, sched, clip, kind = EPOCH_CASES[case]
    extra = (f", max_grad_norm={clip}" if clip else "") + (", scheduler=StepLR(step_size=2, gamma=0.5)" if sched else "")
    return f"train_epoch(model, {opt}, {kind} of batches of {sizes} samples{extra})"


def run_epoch(tl, device, case, *, stale_grads=False, start_in_eval=False):
    sizes, optimizer_name, scheduler_name, max_grad_norm, kind = EPOCH_CASES[case]
    batches = make_batches(sizes, seed=len(case), device=device)
    model = make_model(device)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    scheduler = SCHEDULERS[scheduler_name](optimizer)
    gold, base = reference_copies(model, optimizer_name, scheduler_name)
    if stale_grads:
        for i, p in enumerate(model.parameters()):
            p.grad = randn(*p.shape, seed=300 + i, scale=5.0, device=device)
    if start_in_eval:
        model.eval()
    model, optimizer, scheduler = checks.place(tl, model, optimizer, scheduler)
    if kind == "dataloader":
        inputs, targets = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        loader = checks.run_in(tl, loader_in_executor, inputs, targets, sizes[0])
    else:
        loader = [(x.clone(), y.clone()) for x, y in batches]
    what = describe_epoch(case) + (" with stale gradients in .grad on entry" if stale_grads else "")
    kwargs = {"max_grad_norm": max_grad_norm}
    if scheduler_name:
        kwargs["scheduler"] = scheduler
    with watching(model, optimizer) as watch:
        loss = rules.call(guarded, tl.train_epoch, model, optimizer, loader, what=what, **kwargs)
    results = []
    for m, opt, sched in (gold, base):
        dtype = next(m.parameters()).dtype
        data = [(x.to("cpu", dtype), y.cpu()) for x, y in batches]
        results.append(reference_epoch(m, opt, data, max_grad_norm=max_grad_norm, scheduler=sched))
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, loss=loss, want_loss=results[0], base_loss=results[1],
                           gold=gold, base=base, watch=watch, what=what, batches=batches)  # fmt: skip


def expect_parameters_match(r):
    for (name, p), g, b in zip(r.model.named_parameters(), r.gold[0].parameters(), r.base[0].parameters()):
        expect_close(p.detach(), g.detach(), what=f"parameter {name} after {r.what}", dtype=torch.float32, device=p.device, baseline=b.detach())


def expect_loss(got, want, base, *, what):
    if isinstance(got, torch.Tensor) or not isinstance(got, float):
        raise checks.Wrong(f"{what} returned {describe(got)} ({type(got).__name__}); expected a Python float (use .item() or float())")
    expect_close(torch.tensor(got, dtype=torch.float32), torch.tensor(want, dtype=torch.float64), what=f"the loss {what} returned",
                 dtype=torch.float32, device="cpu", baseline=torch.tensor(base))  # fmt: skip


@pytest.mark.parametrize("case", list(EPOCH_CASES))
def test_train_epoch_matches_torch(tl, device, case):
    """The parameters after the epoch equal those of the same loop written with torch's ops."""
    r = run_epoch(tl, device, case)
    expect_parameters_match(r)


@pytest.mark.parametrize("case", ["sgd_uneven_last_batch", "dataloader_with_clipping_and_scheduler"])
def test_train_epoch_returns_sample_mean_loss(tl, device, case):
    """The loss returned is the mean over every sample (batch means weighted by batch size)."""
    r = run_epoch(tl, device, case)
    expect_loss(r.loss, r.want_loss, r.base_loss, what=r.what)


@pytest.mark.parametrize("case", ["sgd_uneven_last_batch", "adamw_with_scheduler"])
def test_train_epoch_clears_stale_gradients(tl, device, case):
    """Gradients left in .grad before the epoch must not leak into its first step."""
    r = run_epoch(tl, device, case, stale_grads=True)
    expect_parameters_match(r)


def test_train_epoch_puts_model_in_train_mode(tl, device):
    """A model handed over in eval mode trains in train mode: every module, at every
    forward, with autograd on; one forward per batch."""
    r = run_epoch(tl, device, "sgd_uneven_last_batch", start_in_eval=True)
    sizes = [y.shape[0] for _, y in r.batches]
    rows = [f["rows"] for f in r.watch.forwards]
    if rows != sizes:
        raise checks.Wrong(f"{r.what} ran the model on batches of {rows} rows; expected one forward per batch, on {sizes}")
    for i, f in enumerate(r.watch.forwards):
        if not all(f["modes"]):
            raise checks.Wrong(
                f"{r.what} (the model in eval mode on entry) ran forward {i + 1} with modules in eval mode "
                "(dropout off): call model.train() at the start of the epoch"
            )
        if not f["grad_enabled"]:
            raise checks.Wrong(f"{r.what} ran forward {i + 1} with autograd off")
    if not r.model.training:
        raise checks.Wrong(f"after {r.what} the model is in eval mode; train_epoch leaves it in train mode")


@pytest.mark.parametrize("case", ["adamw_with_scheduler", "dataloader_with_clipping_and_scheduler"])
def test_scheduler_stepped_once_per_batch(tl, device, case):
    """scheduler.step() runs once per batch: last_epoch counts the batches afterwards."""
    r = run_epoch(tl, device, case)
    n = len(r.batches)
    last = r.scheduler.last_epoch
    if last != n:
        raise checks.Wrong(f"after {r.what} the scheduler's last_epoch is {last}; expected {n}: step it once after every optimizer step")


@pytest.mark.parametrize("case", ["adamw_with_scheduler", "dataloader_with_clipping_and_scheduler"])
def test_each_step_uses_the_scheduled_lr(tl, device, case):
    """The learning rate at each optimizer step is the schedule's: the first step uses the
    initial lr, and the scheduler steps after the optimizer."""
    r = run_epoch(tl, device, case)
    lr = LEARNING_RATES[EPOCH_CASES[case][1]]
    want = [lr * 0.5 ** (i // 2) for i in range(len(r.batches))]  # StepLR(step_size=2, gamma=0.5)
    got = [round(x, 10) for x in r.watch.lrs]
    if got != [round(x, 10) for x in want]:
        raise checks.Wrong(f"{r.what} took optimizer steps with learning rates {got}; expected {want} "
                           "(optimizer.step(), then scheduler.step(), once per batch)")  # fmt: skip


# ---------------------------------------------------------------- evaluate


def run_evaluate(tl, device, mode="train"):
    batches = make_batches([4, 4, 4, 3], seed=5, device=device)
    model = make_model(device, dropout=0.5)
    if mode == "eval":
        model.eval()
    elif mode == "frozen_dropout":
        model[2].eval()  # a submodule frozen in eval mode while the rest trains
    want_modes = [m.training for m in model.modules()]
    want = reference_eval(copy.deepcopy(model).to("cpu", torch.float64), [(golden(x), y.cpu()) for x, y in batches])
    base = reference_eval(copy.deepcopy(model).cpu(), [(x.cpu(), y.cpu()) for x, y in batches])
    (model,) = checks.place(tl, model)
    what = f"evaluate(model in {mode.replace('_', ' ')} mode, list of batches of [4, 4, 4, 3] samples)"
    with watching(model) as watch:
        loss = rules.call(guarded, tl.evaluate, model, [(x.clone(), y.clone()) for x, y in batches], what=what)
    modes = rules.call(module_modes, model)
    return SimpleNamespace(loss=loss, want=want, base=base, watch=watch, what=what, modes=modes, want_modes=want_modes, model=model)


def module_modes(model):
    return [m.training for m in model.modules()]


def test_evaluate_matches_torch(tl, device):
    """The mean loss over every sample, with dropout off (eval mode)."""
    r = run_evaluate(tl, device)
    expect_loss(r.loss, r.want, r.base, what=r.what)


def test_evaluate_runs_in_eval_mode_without_autograd(tl, device):
    """Every forward runs with every module in eval mode and autograd off (no graph built)."""
    r = run_evaluate(tl, device)
    if not r.watch.forwards:
        raise checks.Wrong(f"{r.what} never called model(inputs)")
    for i, f in enumerate(r.watch.forwards):
        if any(f["modes"]):
            raise checks.Wrong(f"{r.what} ran forward {i + 1} with modules in train mode (dropout on): call model.eval() first")
        if f["grad_enabled"] or f["graph"]:
            raise checks.Wrong(
                f"{r.what} ran forward {i + 1} with autograd on, building a graph nobody needs: "
                "wrap the loop in torch.no_grad() (or torch.inference_mode())"
            )


@pytest.mark.parametrize("mode", ["train", "eval", "frozen_dropout"])
def test_evaluate_restores_the_modes(tl, device, mode):
    """Afterwards every module is in the mode it was in before, a submodule frozen in eval
    mode inside a training model included."""
    r = run_evaluate(tl, device, mode)
    if r.modes != r.want_modes:
        names = ["model", "model[0] Linear", "model[1] Tanh", "model[2] Dropout", "model[3] Linear"]
        diff = [f"{n}: {'train' if w else 'eval'} before, {'train' if g else 'eval'} after" for n, w, g in zip(names, r.want_modes, r.modes) if w != g]
        raise checks.Wrong(f"{r.what} changed the modes: {'; '.join(diff)}. Remember each module's .training and restore it")


# ---------------------------------------------------------------- checkpoints and exact resume

RESUME_SIZES = 22, 4  # samples, batch size: 6 batches per epoch, the last of 2
SAVED_EPOCH = 3


def resume_objects(init_seed):
    """Model (with dropout), AdamW, StepLR, a shuffling DataLoader and its generator, all
    on the CPU. init_seed picks the initial weights: a fresh process would draw others."""
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Dropout(0.25), nn.Linear(HIDDEN, CLASSES))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(randn(*p.shape, seed=init_seed + i, scale=0.5, device="cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)  # 6 batches per epoch
    generator = torch.Generator().manual_seed(7)
    inputs, targets = make_data(RESUME_SIZES[0], 11, "cpu")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, targets), batch_size=RESUME_SIZES[1], shuffle=True, generator=generator
    )
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, generator=generator, loader=loader)


def snapshot(o):
    """Everything a resume depends on, copied."""
    return {
        "model": {k: v.detach().clone() for k, v in o.model.state_dict().items()},
        "optimizer": copy.deepcopy(o.optimizer.state_dict()),
        "scheduler": {k: copy.deepcopy(o.scheduler.state_dict().get(k)) for k in ("last_epoch", "_step_count", "base_lrs", "_last_lr")},
        "generator": o.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def one_epoch(o):
    return reference_epoch(o.model, o.optimizer, o.loader, scheduler=o.scheduler)


def resume_trial(save, load):
    """In the executor: two epochs straight, and one epoch + save + a fresh start (other
    weights, other global seed, fresh objects) + load + a second epoch."""
    folder = tempfile.mkdtemp(prefix="kata-checkpoint-")  # under TMPDIR: the sandbox's scratch
    path = os.path.join(folder, "checkpoint.pt")
    try:
        with bookkeeping():
            harness.seed_torch(1234)
            straight = resume_objects(100)
            one_epoch(straight)
            one_epoch(straight)
            harness.seed_torch(1234)
            first = resume_objects(100)
            one_epoch(first)
            saved = snapshot(first)
        save(path, model=first.model, optimizer=first.optimizer, scheduler=first.scheduler, epoch=SAVED_EPOCH, generator=first.generator)
        with bookkeeping():
            unchanged_by_save = torch.equal(torch.get_rng_state(), saved["torch_rng"])
            try:
                torch.load(path, weights_only=True)
                weights_only_error = None
            except Exception as exc:  # noqa: BLE001 - any failure is the checkpoint's
                weights_only_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            harness.seed_torch(999)  # a new process: another global random state...
            fresh = resume_objects(500)  # ...and freshly built objects
        epoch = load(path, model=fresh.model, optimizer=fresh.optimizer, scheduler=fresh.scheduler, generator=fresh.generator)
        with bookkeeping():
            loaded = snapshot(fresh)
            one_epoch(fresh)
            return {
                "saved": saved, "loaded": loaded, "epoch": epoch if isinstance(epoch, (int, float, str, type(None))) else repr(epoch),
                "straight": {k: v.detach().clone() for k, v in straight.model.state_dict().items()},
                "resumed": {k: v.detach().clone() for k, v in fresh.model.state_dict().items()},
                "weights_only_error": weights_only_error, "rng_unchanged_by_save": unchanged_by_save,
            }  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


RESUME_WHAT = (
    "one epoch (AdamW, StepLR per batch, dropout, a DataLoader shuffling with generator=), "
    f"save_checkpoint(path, ..., epoch={SAVED_EPOCH}), then fresh objects and another global seed, load_checkpoint(path, ...)"
)


def run_resume(tl):
    return rules.call(resume_trial, tl.save_checkpoint, tl.load_checkpoint, what=RESUME_WHAT)


def first_difference(got, want, path=""):
    """Where two nested values differ (tensors bit for bit), or None."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{path or 'value'} is {describe(got)}, expected a tensor {describe(want)}"
        if got.shape != want.shape or got.dtype != want.dtype or not torch.equal(got.cpu(), want.cpu()):
            return f"{path or 'value'} differs ({describe(got)} vs {describe(want)}" + (
                f", max abs difference {checks.max_error(got, want):.3g})" if got.shape == want.shape and got.is_floating_point() else ")"
            )
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{path or 'value'} is {describe(got)}, expected a dict"
        for k in want:
            if k not in got:
                return f"{path}[{k!r}] is missing"
            d = first_difference(got[k], want[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return f"{path or 'value'} is {got!r}, expected {want!r}"
        for i, (a, b) in enumerate(zip(got, want)):
            d = first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if got == want else f"{path or 'value'} is {got!r}, expected {want!r}"


def expect_restored(part, r, advice):
    d = first_difference(r["loaded"][part], r["saved"][part])
    if d:
        raise checks.Wrong(f"after {RESUME_WHAT}: the {part} is not as it was saved: {d}. {advice}")


def test_checkpoint_loads_with_weights_only(tl):
    """The file loads with torch.load(path, weights_only=True): tensors and plain data only,
    and saving leaves the global random state alone."""
    r = run_resume(tl)
    if r["weights_only_error"]:
        raise checks.Wrong(
            f"after {RESUME_WHAT}: torch.load(path, weights_only=True) refused the checkpoint ({r['weights_only_error']}). "
            "Save state_dict()s, generator states and numbers, never the objects themselves"
        )
    if not r["rng_unchanged_by_save"]:
        raise checks.Wrong(f"{RESUME_WHAT}: save_checkpoint changed torch's global random state; saving must not draw or reseed")


def test_load_restores_model(tl):
    """The fresh model's parameters and buffers are the saved ones."""
    expect_restored("model", run_resume(tl), "Save model.state_dict() and load it with model.load_state_dict")


def test_load_restores_optimizer_state(tl):
    """The fresh optimizer's state (AdamW's step and moments) and hyperparameters are the saved ones."""
    expect_restored("optimizer", run_resume(tl), "Save optimizer.state_dict() (Adam's moments live there) and load it")


def test_load_restores_scheduler_state(tl):
    """The fresh scheduler is where the saved one was (last_epoch, last lr)."""
    expect_restored("scheduler", run_resume(tl), "Save scheduler.state_dict() and load it")


def test_load_restores_data_order(tl):
    """The loader's generator has the saved state: the next epoch shuffles as it would have."""
    expect_restored("generator", run_resume(tl), "Save generator.get_state() and restore it with generator.set_state")


def test_load_restores_dropout_rng(tl):
    """torch's global generator, which dropout draws from, has the state it had when saved."""
    expect_restored("torch_rng", run_resume(tl), "Save torch.get_rng_state() and restore it with torch.set_rng_state")


def test_load_returns_saved_epoch(tl):
    """load_checkpoint returns the epoch that was saved, as a Python int."""
    r = run_resume(tl)
    if type(r["epoch"]) is not int or r["epoch"] != SAVED_EPOCH:
        raise checks.Wrong(f"after {RESUME_WHAT}: load_checkpoint returned {r['epoch']!r}; expected {SAVED_EPOCH} (the epoch saved, a Python int)")


def test_resume_is_bit_for_bit(tl):
    """Two epochs straight and one epoch + checkpoint + load + one epoch end with the same
    parameters, bit for bit."""
    r = run_resume(tl)
    d = first_difference(r["resumed"], r["straight"])
    if d:
        raise checks.Wrong(f"two epochs straight and {RESUME_WHAT} then a second epoch end differently: the parameters {d}")
