"""Grader for the grad_accumulation kata: accumulate_and_step and train_epoch.

Every step is checked against one full-batch step on the concatenated micro-batches,
taken by torch itself (F.cross_entropy with ignore_index, clip_grad_norm_, the same
torch.optim optimizer) on a float64 copy of the model; float32 tolerances are widened by
the error the same torch computation makes in float32. Parameters and gradients after
the step, the returned loss, the number of optimizer steps, and how the model is run
(one micro-batch per forward, a backward after each) are all checked, under the kata's
rules (micro-batch tensors unmodified) on every call; a work check counts aten ops at
two micro-batch sizes.

There is no speed check: a step's time is the model's, and the mistakes that cost time
(a forward per sample, a Python loop over targets) are caught deterministically by the
work check and the forward hook instead.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course
from kata.checks import describe, expect_close, golden, randn

TOPIC = course.get("grad_accumulation")
rules = checks.Rules(TOPIC.forbidden)

VOCAB, WIDTH, FEATURES, CLASSES, SEQ = 11, 8, 6, 5, 5


@pytest.fixture(scope="module")
def ga(impl):
    return impl.load("grad_accumulation")


# ---------------------------------------------------------------- models and optimizers


def make_model(kind: str, device) -> nn.Module:
    """A small seeded model: 'classifier' maps (N, 6) floats to (N, 5) logits; 'lm' maps
    (B, T) token ids to (B, T, 11) logits, as a language model's head does, and 'grid'
    (the same model) (B, 2, T) ids to (B, 2, T, 11) logits: logits (..., C) have any
    number of leading dims."""
    if kind == "classifier":
        model = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES))
    else:
        model = nn.Sequential(nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, 16), nn.Tanh(), nn.Linear(16, VOCAB))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(randn(*p.shape, seed=200 + i, scale=0.7, device="cpu"))
    return model.to(device)


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.5, momentum=0.9),
    # A large eps keeps Adam's first update, g / (|g| + eps), a smooth function of the
    # gradient: with the default 1e-8 it is sign(g), and a gradient entry near 0 could
    # flip sign between two correct float32 summation orders.
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, eps=1e-3, weight_decay=0.1),
}


def copies(model, optimizer_name):
    """(model, optimizer) for torch's reference: a float64 CPU copy (golden) and a float32
    copy on the device (baseline), both taken before the learner's code runs."""
    gold = copy.deepcopy(model).to("cpu", torch.float64)
    base = copy.deepcopy(model)
    return (gold, OPTIMIZERS[optimizer_name](gold.parameters())), (base, OPTIMIZERS[optimizer_name](base.parameters()))


# ---------------------------------------------------------------- micro-batches


def make_micro_batches(kind, spec, device, *, ignore_index=-100, seed=0):
    """One (inputs, targets) pair per entry of `spec`, a list of per-row real lengths.

    'lm': row lengths in 0..SEQ; positions past a row's length are padding (target
    ignore_index); 'grid': the same, each row holding 2 such sequences of one length.
    'classifier': each row is 1 (a real target) or 0 (ignored).
    Real targets avoid class 0, so that ignore_index=0 can stand for a pad token."""
    batches = []
    for i, lengths in enumerate(spec):
        g = torch.Generator().manual_seed(seed * 100 + i)
        rows = len(lengths)
        if kind in ("lm", "grid"):
            shape = (rows, SEQ) if kind == "lm" else (rows, 2, SEQ)
            inputs = torch.randint(0, VOCAB, shape, generator=g)
            targets = torch.randint(1, VOCAB, shape, generator=g)
            real = torch.arange(SEQ) < torch.tensor(lengths).view(-1, *[1] * (len(shape) - 1))  # (B, T) or (B, 2, T)
        else:
            inputs = torch.randn(rows, FEATURES, generator=g, dtype=torch.float64).float()
            targets = torch.randint(1, CLASSES, (rows,), generator=g)
            real = torch.tensor(lengths, dtype=torch.bool)  # (N,)
        targets = targets.masked_fill(~real, ignore_index)
        batches.append((inputs.to(device), targets.to(device)))
    return batches


def clone_batches(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def describe_batches(batches, ignore_index) -> str:
    parts = [f"({describe(x)}, {describe(y)}: {int((y != ignore_index).sum())} real)" for x, y in batches]
    return f"[{', '.join(parts)}]"


def describe_step(optimizer_name, batches, ignore_index, max_grad_norm) -> str:
    return (
        f"accumulate_and_step(model, {optimizer_name}, {describe_batches(batches, ignore_index)}, "
        f"ignore_index={ignore_index}, max_grad_norm={max_grad_norm})"
    )


# name: (model kind, real lengths per micro-batch, ignore_index, max_grad_norm)
STEP_CASES = {
    "equal_sizes": ("classifier", [[1] * 4, [1] * 4, [1] * 4], -100, None),
    "unequal_sizes": ("classifier", [[1, 1], [1, 0, 1, 1, 1], [0, 1, 1]], -100, None),
    "single_micro_batch": ("classifier", [[1, 0, 1, 1]], -100, None),
    "tokens_with_padding": ("lm", [[5, 2], [1, 4, 3], [5]], -100, None),
    "micro_batch_without_real_tokens": ("lm", [[5, 3], [0, 0], [2, 4, 1]], -100, None),
    "custom_ignore_index": ("lm", [[5, 2], [3], [1, 4, 5]], 0, None),
    "token_grid": ("grid", [[5, 2], [1, 4, 3], [3]], -100, None),
    "clipping_bites": ("lm", [[5, 2], [1, 4, 3], [5]], -100, 0.05),
    "clipping_does_not_bite": ("lm", [[5, 2], [1, 4, 3], [5]], -100, 1e3),
    "clipping_bites_unequal_sizes": ("classifier", [[1, 1], [1, 0, 1, 1, 1], [0, 1, 1]], -100, 0.05),
    # One real micro-batch, then one that is all padding: adding up unscaled means is right
    # here (there is one mean), keeping only the last micro-batch's gradient is not.
    "last_micro_batch_without_real_tokens": ("lm", [[5, 3, 2], [0, 0]], -100, None),
}


def step_case(name, device):
    kind, spec, ignore_index, max_grad_norm = STEP_CASES[name]
    batches = make_micro_batches(kind, spec, device, ignore_index=ignore_index, seed=len(name))
    return make_model(kind, device), batches, ignore_index, max_grad_norm


# ---------------------------------------------------------------- torch's reference


def full_batch_step(model, optimizer, batches, ignore_index, max_grad_norm):
    """The step accumulation must reproduce: one forward on the concatenated batch."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = torch.cat([x for x, _ in batches]).to(device)
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    targets = torch.cat([y for _, y in batches]).to(device)
    optimizer.zero_grad()
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)
    loss.backward()
    if max_grad_norm is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if max_grad_norm < 1 and norm <= 2 * max_grad_norm:
            raise RuntimeError(f"grader bug: the gradient norm {norm:.3g} is too small for max_grad_norm={max_grad_norm} to bite")
    optimizer.step()
    return loss.detach()


def expect_matches_reference(model, gold, base, *, what):
    """Every parameter and its .grad equal the golden copy's, within float32 tolerance."""
    for (name, p), g, b in zip(model.named_parameters(), gold.parameters(), base.parameters()):
        # The gradient first: a wrong gradient is the cause of a wrong parameter.
        if p.grad is None:
            raise checks.Wrong(f"after {what}, {name}.grad is None; expected the full-batch gradient (do not clear it after the step)")
        expect_close(p.grad, g.grad, what=f"{name}.grad after {what}", dtype=torch.float32, device=p.device, baseline=b.grad)
        expect_close(p.detach(), g.detach(), what=f"parameter {name} after {what}", dtype=torch.float32, device=p.device, baseline=b.detach())


def expect_loss(got, want, baseline, *, what):
    if isinstance(got, torch.Tensor) or not isinstance(got, float):
        raise checks.Wrong(f"{what} returned {describe(got)} ({type(got).__name__}); expected a Python float (use .item() or float())")
    expect_close(torch.tensor(got, dtype=torch.float32), want, what=f"the loss {what} returned", dtype=torch.float32, device="cpu", baseline=baseline.cpu().float())


# ---------------------------------------------------------------- watching the learner


class Watch:
    """Records what the model and optimizer go through: each forward's input shape, the
    order of forwards and backwards (a hook on each forward's output fires when backward
    reaches it), and each optimizer step."""

    def __init__(self, model, optimizer):
        self.shapes, self.events, self.steps = [], [], 0
        self.handles = [
            model.register_forward_hook(self._forward, with_kwargs=True),
            optimizer.register_step_post_hook(self._step),
        ]

    def _forward(self, module, args, kwargs, output):
        inputs = args[0] if args else next(iter(kwargs.values()), None)
        self.shapes.append(tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else inputs)
        self.events.append("forward")
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self.events.append("backward"))

    def _step(self, optimizer, args, kwargs):
        self.steps += 1
        self.events.append("step")

    def remove(self):
        for h in self.handles:
            h.remove()


@contextmanager
def watching(model, optimizer):
    """A Watch beside the model, in the executor; its records are read after the call."""
    watch = rules.call(Watch, model, optimizer)
    try:
        yield watch
    finally:
        watch.remove()


def call_step(ga, model, optimizer, batches, *, ignore_index, max_grad_norm, what):
    kwargs = {"max_grad_norm": max_grad_norm}
    if ignore_index != -100:
        kwargs["ignore_index"] = ignore_index
    return rules.call(ga.accumulate_and_step, model, optimizer, batches, what=what, **kwargs)


def run_case(ga, device, case, optimizer_name, *, stale_grads=False):
    """Grade one step: the learner's call and torch's full-batch step from the same start."""
    model, batches, ignore_index, max_grad_norm = step_case(case, device)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    (gold, gold_opt), (base, base_opt) = copies(model, optimizer_name)
    if stale_grads:
        for i, p in enumerate(model.parameters()):
            p.grad = randn(*p.shape, seed=300 + i, scale=5.0, device=device)
    model, optimizer = checks.place(ga, model, optimizer)  # where the learner's code runs
    what = describe_step(optimizer_name, batches, ignore_index, max_grad_norm)
    with watching(model, optimizer) as watch:
        loss = call_step(ga, model, optimizer, clone_batches(batches), ignore_index=ignore_index, max_grad_norm=max_grad_norm, what=what)
    want_loss = full_batch_step(gold, gold_opt, [(golden(x), golden(y)) for x, y in batches], ignore_index, max_grad_norm)
    base_loss = full_batch_step(base, base_opt, batches, ignore_index, max_grad_norm)
    return SimpleNamespace(
        model=model, optimizer=optimizer, gold=gold, base=base, loss=loss, want_loss=want_loss, base_loss=base_loss, watch=watch, what=what
    )


# ---------------------------------------------------------------- accumulate_and_step


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_matches_full_batch(ga, device, case, optimizer_name):
    """Parameters and gradients after the step equal one full-batch step's."""
    r = run_case(ga, device, case, optimizer_name)
    expect_matches_reference(r.model, r.gold, r.base, what=r.what)


@pytest.mark.parametrize("case", ["unequal_sizes", "tokens_with_padding", "micro_batch_without_real_tokens", "custom_ignore_index"])
def test_returns_full_batch_loss(ga, device, case):
    """The loss returned is the full-batch mean over real targets, as a Python float."""
    r = run_case(ga, device, case, "sgd")
    expect_loss(r.loss, r.want_loss, r.base_loss, what=r.what)


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("case", ["unequal_sizes", "clipping_bites"])
def test_clears_stale_gradients(ga, device, case, optimizer_name):
    """Gradients left in .grad before the call must not leak into the step."""
    r = run_case(ga, device, case, optimizer_name, stale_grads=True)
    expect_matches_reference(r.model, r.gold, r.base, what=f"{r.what} with stale gradients in .grad on entry")


def test_takes_exactly_one_step(ga, device):
    """optimizer.step() runs once per call (counted by a step hook and by AdamW's own step counter)."""
    r = run_case(ga, device, "tokens_with_padding", "adamw")
    adam_steps = sorted({int(s["step"]) for s in r.optimizer.state.values()})
    if r.watch.steps != 1 or adam_steps != [1]:
        raise checks.Wrong(
            f"{r.what} called optimizer.step() {r.watch.steps} times (AdamW's state['step'] is {adam_steps}); "
            "expected exactly once, after every micro-batch"
        )


@pytest.mark.parametrize("case", ["unequal_sizes", "tokens_with_padding"])
def test_model_sees_one_micro_batch_at_a_time(ga, device, case):
    """model(inputs) runs once per micro-batch, on that micro-batch alone."""
    model, batches, ignore_index, max_grad_norm = step_case(case, device)
    model, optimizer = checks.place(ga, model, OPTIMIZERS["sgd"](model.parameters()))
    what = describe_step("sgd", batches, ignore_index, max_grad_norm)
    with watching(model, optimizer) as watch:
        call_step(ga, model, optimizer, batches, ignore_index=ignore_index, max_grad_norm=max_grad_norm, what=what)
    want = sorted(tuple(x.shape) for x, _ in batches)
    if sorted(watch.shapes) != want:
        raise checks.Wrong(
            f"{what} ran the model on inputs of shapes {watch.shapes}; expected one call per micro-batch, "
            f"on shapes {[tuple(x.shape) for x, _ in batches]} (in any order): never concatenate them, "
            "never run a micro-batch twice or piece by piece, and call model(inputs), not model.forward"
        )


@pytest.mark.parametrize("case", ["unequal_sizes", "tokens_with_padding"])
def test_backward_after_each_micro_batch(ga, device, case):
    """Each micro-batch's backward runs before the next forward, so its activations are
    freed: holding every graph until one final backward uses the full batch's memory."""
    model, batches, ignore_index, max_grad_norm = step_case(case, device)
    model, optimizer = checks.place(ga, model, OPTIMIZERS["sgd"](model.parameters()))
    what = describe_step("sgd", batches, ignore_index, max_grad_norm)
    with watching(model, optimizer) as watch:
        call_step(ga, model, optimizer, batches, ignore_index=ignore_index, max_grad_norm=max_grad_norm, what=what)
    want = ["forward", "backward"] * len(batches) + ["step"]
    if watch.events != want:
        raise checks.Wrong(
            f"{what} ran, in order: {', '.join(watch.events)}; expected {', '.join(want)}: "
            "backward each micro-batch's loss before running the model on the next one"
        )


def with_grad(step, *args, **kwargs):
    """step(*args, **kwargs) with autograd on, in the executor: count_ops runs under
    no_grad, and a training step needs grad."""
    with torch.enable_grad():
        return step(*args, **kwargs)


def test_no_loop_over_samples(ga, device):
    """The same aten ops for micro-batches of 2 rows as of 6: no Python loop over rows or targets."""

    def ops(rows):
        model = make_model("lm", device)
        model, optimizer = checks.place(ga, model, OPTIMIZERS["adamw"](model.parameters()))
        spec = [[(r % SEQ) + 1 for r in range(rows)]] * 3
        batches = make_micro_batches("lm", spec, device)
        return rules.count_ops(with_grad, ga.accumulate_and_step, model, optimizer, batches, max_grad_norm=0.05)

    checks.expect_same_op_count(
        partial(ops, 2), partial(ops, 6), what="accumulate_and_step", small_desc="3 micro-batches of (2, 5) tokens", large_desc="3 micro-batches of (6, 5) tokens"
    )


# ---------------------------------------------------------------- train_epoch


def one_pass(batches):
    """A loader that can be iterated once (made in the executor, where it is iterated)."""
    return (b for b in batches)


# name: (number of batches, accumulation_steps, loader kind, optimizer, max_grad_norm)
EPOCH_CASES = {
    "partial_last_group": (5, 2, "list", "sgd", None),
    "exact_groups": (6, 3, "list", "adamw", None),
    "generator_loader": (5, 2, "generator", "adamw", 0.05),
    "one_batch_per_step": (3, 1, "list", "sgd", None),
    "fewer_batches_than_steps": (2, 4, "list", "adamw", None),
}


@pytest.mark.parametrize("case", list(EPOCH_CASES))
def test_train_epoch_matches_full_batch_steps(ga, device, case):
    """One full-batch step per group of accumulation_steps batches, a smaller last group included."""
    n_batches, steps, loader_kind, optimizer_name, max_grad_norm = EPOCH_CASES[case]
    spec = [[5, 2], [1, 4, 3], [5], [2, 2, 5, 1], [3, 3], [4]][:n_batches]
    batches = make_micro_batches("lm", spec, device, seed=7)
    model = make_model("lm", device)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    (gold, gold_opt), (base, base_opt) = copies(model, optimizer_name)
    model, optimizer = checks.place(ga, model, optimizer)
    loader = clone_batches(batches) if loader_kind == "list" else checks.run_in(ga, one_pass, clone_batches(batches))
    what = (
        f"train_epoch(model, {optimizer_name}, {loader_kind} of {n_batches} batches, accumulation_steps={steps}"
        f"{'' if max_grad_norm is None else f', max_grad_norm={max_grad_norm}'})"
    )
    with watching(model, optimizer) as watch:
        losses = rules.call(ga.train_epoch, model, optimizer, loader, steps, what=what, max_grad_norm=max_grad_norm)

    groups = [batches[i : i + steps] for i in range(0, n_batches, steps)]
    want = [full_batch_step(gold, gold_opt, [(golden(x), golden(y)) for x, y in g], -100, max_grad_norm) for g in groups]
    base_losses = [full_batch_step(base, base_opt, g, -100, max_grad_norm) for g in groups]
    if watch.steps != len(groups):
        raise checks.Wrong(f"{what} took {watch.steps} optimizer steps; expected {len(groups)} (groups of {steps}, the last one may be smaller)")
    if not isinstance(losses, list) or len(losses) != len(groups):
        raise checks.Wrong(f"{what} returned {describe(losses)}; expected a list of {len(groups)} floats, one loss per step")
    for i, (got, w, b) in enumerate(zip(losses, want, base_losses)):
        expect_loss(got, w, b, what=f"{what} (step {i})")
    expect_matches_reference(model, gold, base, what=what)
