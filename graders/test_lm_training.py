"""Grader for the lm_training kata: next_token_batch, lm_loss, evaluate_perplexity,
pack_sequences and document_causal_mask.

Losses are checked against F.cross_entropy with ignore_index in float64, and perplexity
against the pooled NLL of a float64 copy of the same model; the batches hold sequences
with different numbers of real tokens, and evaluation sets batches with different
numbers of real tokens, where a mean of per-sequence means, a division by every position
or a mean of per-batch perplexities differ from the token mean. Evaluation is watched by a
forward hook (eval mode, no autograd, one call per batch) and the model's mode afterwards.
Packing and masks are checked against a token-by-token reading of the definitions, on
documents longer than a block, shorter than one, empty, and sets shorter than a block.
Inputs unmodified, on every call.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata import checks, course
from kata.checks import describe, describe_call, expect_close, expect_tensor, golden, randn

TOPIC = course.get("lm_training")
rules = checks.Rules(TOPIC.forbidden)
VOCAB = 13


@pytest.fixture(scope="module")
def lm(impl):
    return impl.load("lm_training")


# ---------------------------------------------------------------- inputs


def padded_batch(lengths, T, device, *, seed, pad_id=0, bool_mask=False):
    """(ids (B, T), attention_mask (B, T)): row b has lengths[b] real tokens (ids 1..V-1), then pad_id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), T), generator=g)
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    ids = ids.masked_fill(~real, pad_id)
    mask = real if bool_mask else real.long()
    return ids.to(device), mask.to(device)


def torch_next_token(ids, mask, ignore_index=-100):
    targets = ids[:, 1:].clone()
    targets[mask[:, 1:] == 0] = ignore_index
    return ids[:, :-1], targets


# name: (real lengths per row, T, options)
BATCH_CASES = {
    "no_padding": ([6, 6], 6, {}),
    "right_padding": ([6, 3, 1, 5], 6, {}),
    "bool_mask": ([4, 2, 5], 5, {"bool_mask": True}),
    "custom_ignore_index": ([5, 2, 4], 5, {"ignore_index": 0}),
    "two_positions": ([2, 1], 2, {}),
    "empty_row": ([4, 0], 4, {}),  # a row of padding only: no target at all
}


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_next_token_batch_shifts_targets(lm, device, case):
    lengths, T, opts = BATCH_CASES[case]
    opts = dict(opts)
    ignore_index = opts.pop("ignore_index", -100)
    ids, mask = padded_batch(lengths, T, device, seed=len(case), **opts)
    kwargs = {} if ignore_index == -100 else {"ignore_index": ignore_index}
    what = describe_call("next_token_batch", ids, mask, **kwargs)
    got = rules.call(lm.next_token_batch, ids, mask, what=what, **kwargs)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise checks.Wrong(f"{what} returned {describe(got)}; expected a tuple (inputs, targets)")
    want_in, want_tg = torch_next_token(ids.cpu(), mask.cpu(), ignore_index)
    for name, g, w in (("inputs", got[0], want_in), ("targets", got[1], want_tg)):
        expect_tensor(g, shape=w.shape, dtype=torch.int64, device=device, what=f"{name} of {what}")
        if not torch.equal(g.cpu(), w):
            row = int((g.cpu() != w).any(dim=1).nonzero()[0])
            raise checks.Wrong(
                f"{name} of {what}, row {row} ({lengths[row]} real tokens of {T}): got {g[row].tolist()}, "
                f"expected {w[row].tolist()} (ids {ids[row].tolist()}; inputs ids[:, :-1], targets ids[:, 1:] "
                f"with {ignore_index} where the target is padding)"
            )


# ---------------------------------------------------------------- lm_loss


def loss_case(name, device, dtype=torch.float32):
    """(logits (B, T, V), targets (B, T), ignore_index) for one named case."""
    cases = {
        # lengths 5, 2, 1 real targets: a mean of per-sequence means weighs row 2's one token 5x.
        "uneven_sequences": ([5, 2, 1], 5, -100, 1.0),
        # Equal real lengths: per-sequence means agree with the token mean; dividing by every position does not.
        "equal_sequences_with_padding": ([3, 3], 5, -100, 1.0),
        "no_padding": ([4, 4, 4], 4, -100, 1.0),
        "custom_ignore_index": ([4, 1, 3], 4, 0, 1.0),
        "large_logits": ([5, 2, 4], 5, -100, 1000.0),
        "non_contiguous": ([5, 3], 5, -100, 1.0),
    }
    lengths, T, ignore_index, scale = cases[name]
    g = torch.Generator().manual_seed(len(name))
    targets = torch.randint(1, VOCAB, (len(lengths), T), generator=g)
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    targets = targets.masked_fill(~real, ignore_index).to(device)
    if name == "non_contiguous":
        logits = randn(len(lengths), VOCAB, T, seed=3, device=device, dtype=dtype).transpose(1, 2)
    else:
        logits = randn(len(lengths), T, VOCAB, seed=3, device=device, dtype=dtype, scale=scale)
    return logits, targets, ignore_index


def torch_lm_loss(logits, targets, ignore_index):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)


LOSS_CASES = ["uneven_sequences", "equal_sequences_with_padding", "no_padding", "custom_ignore_index", "large_logits", "non_contiguous"]


def call_loss(lm, logits, targets, ignore_index, **options):
    kwargs = {} if ignore_index == -100 else {"ignore_index": ignore_index}
    what = describe_call("lm_loss", logits, targets, **kwargs)
    return rules.call(lm.lm_loss, logits, targets, what=what, **kwargs, **options), what


@pytest.mark.parametrize("case", LOSS_CASES)
def test_lm_loss_is_token_mean(lm, device, case):
    """The mean over every real target token of the batch, as F.cross_entropy gives it."""
    logits, targets, ignore_index = loss_case(case, device)
    got, what = call_loss(lm, logits, targets, ignore_index)
    want = torch_lm_loss(golden(logits), targets.cpu(), ignore_index)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=torch_lm_loss(logits, targets, ignore_index))


@pytest.mark.parametrize("case", ["uneven_sequences", "large_logits"])
def test_lm_loss_gradient(lm, device, case):
    logits, targets, ignore_index = loss_case(case, device)
    logits = logits.detach().requires_grad_()
    upstream = torch.tensor(0.7, device=device)
    _, what = call_loss(lm, logits, targets, ignore_index, backward=upstream)
    if logits.grad is None:
        raise checks.Wrong(f"after {what}.backward(), logits.grad is None: the loss must be differentiable")
    gl = golden(logits)
    want = torch.autograd.grad(torch_lm_loss(gl, targets.cpu(), ignore_index), gl, golden(upstream))[0]
    bl = logits.detach().requires_grad_()
    base = torch.autograd.grad(torch_lm_loss(bl, targets, ignore_index), bl, upstream)[0]
    expect_close(logits.grad, want, what=f"logits.grad after {what}.backward()", dtype=torch.float32, device=device, baseline=base)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["uneven_sequences", "large_logits"])
def test_lm_loss_low_precision(lm, device, case, dtype):
    """Half-precision logits give a float32 loss, as close to the float64 one as
    F.cross_entropy on the logits converted to float32."""
    checks.need_dtype(dtype, device)
    logits, targets, ignore_index = loss_case(case, device, dtype)
    got, what = call_loss(lm, logits, targets, ignore_index)
    want = torch_lm_loss(golden(logits), targets.cpu(), ignore_index)
    expect_close(got, want, what=what, dtype=torch.float32, device=device, baseline=torch_lm_loss(logits.float(), targets, ignore_index))


# ---------------------------------------------------------------- evaluate_perplexity


def make_model(device, *, dropout=0.5):
    """A tiny seeded language model (ids (B, T) -> logits (B, T, V)) with dropout, so eval mode changes its output."""
    model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Dropout(dropout), nn.Linear(8, VOCAB))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(randn(*p.shape, seed=60 + i, device="cpu"))
    return model.to(device)


# name: per batch, (real lengths per row, T)
EVAL_CASES = {
    # Different numbers of real tokens per batch: 14 targets, 3 targets, 8 targets.
    "uneven_batches": [([6, 5, 4, 3], 6), ([3, 2], 3), ([5, 5], 5)],
    # The same count in every batch (a mean of per-batch losses is right here, a mean of perplexities is not).
    "equal_batches": [([4, 3], 5), ([2, 5], 5), ([4, 3], 6)],
    "single_batch": [([6, 2, 4], 6)],
}


def eval_batches(case, device):
    return [padded_batch(lengths, T, device, seed=10 * i + len(case)) for i, (lengths, T) in enumerate(EVAL_CASES[case])]


def torch_perplexity(model, batches):
    """exp(total NLL / total real targets) of a float64 CPU copy of the model, in eval mode."""
    gold = copy.deepcopy(model).to("cpu", torch.float64).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in batches:
            inputs, targets = torch_next_token(ids.cpu(), mask.cpu())
            logits = gold(inputs)
            total += F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="sum").item()
            count += int((targets != -100).sum())
    return math.exp(total / count)


class EvalWatch:
    """A forward pre-hook on the model, in the executor: (input shape, training, grad enabled) per call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        ids = args[0] if args else None
        self.calls.append((tuple(ids.shape) if isinstance(ids, torch.Tensor) else None, module.training, torch.is_grad_enabled()))

    def remove(self):
        self.handle.remove()


def one_pass(batches):
    """An evaluation set that can be iterated once (made in the executor, where it is read)."""
    return (b for b in batches)


def run_eval(lm, device, case, *, train=True, loader="list"):
    """(perplexity, the model's calls, the model's mode after, what, torch's perplexity)."""
    model = make_model(device).train(train)
    batches = eval_batches(case, device)
    want = torch_perplexity(model, batches)
    (model,) = checks.place(lm, model)
    watch = rules.call(EvalWatch, model)
    data = batches if loader == "list" else checks.run_in(lm, one_pass, batches)
    what = f"evaluate_perplexity(model in {'train' if train else 'eval'} mode, {loader} of {len(batches)} batches " + \
        ", ".join(f"{describe(ids)}" for ids, _ in batches) + ")"  # fmt: skip
    try:
        got = rules.call(lm.evaluate_perplexity, model, data, what=what)
        calls = watch.calls
    finally:
        watch.remove()
    return got, calls, model.training, what, want


def expect_perplexity(got, want, what):
    if isinstance(got, torch.Tensor) or not isinstance(got, float):
        raise checks.Wrong(f"{what} returned {describe(got)} ({type(got).__name__}); expected a Python float")
    if not math.isclose(got, want, rel_tol=1e-5):
        raise checks.Wrong(
            f"{what} returned {got:.6g}; expected {want:.6g}, exp(total NLL / total real targets) over all batches "
            "in eval mode (not a mean of per-batch perplexities or losses)"
        )


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_perplexity_pools_tokens_over_batches(lm, device, case):
    got, _, _, what, want = run_eval(lm, device, case)
    expect_perplexity(got, want, what)


def test_perplexity_reads_a_one_pass_iterator(lm, device):
    """The evaluation set may be a generator: read it once."""
    got, _, _, what, want = run_eval(lm, device, "uneven_batches", loader="generator")
    expect_perplexity(got, want, what)


def test_evaluate_runs_in_eval_mode_without_grad(lm, device):
    _, calls, _, what, _ = run_eval(lm, device, "uneven_batches")
    want_shapes = [(len(lengths), T - 1) for lengths, T in EVAL_CASES["uneven_batches"]]
    if [shape for shape, _, _ in calls] != want_shapes:
        raise checks.Wrong(f"{what} called the model on {[s for s, _, _ in calls]}; expected once per batch, on the inputs {want_shapes}")
    if any(training for _, training, _ in calls):
        raise checks.Wrong(f"{what} ran the model in training mode (dropout on): call model.eval() first")
    if any(grad for _, _, grad in calls):
        raise checks.Wrong(f"{what} ran the model with autograd recording: evaluate under torch.no_grad()")


@pytest.mark.parametrize("train", [True, False], ids=["was_training", "was_eval"])
def test_evaluate_restores_the_model_mode(lm, device, train):
    _, _, training_after, what, _ = run_eval(lm, device, "single_batch", train=train)
    if training_after != train:
        raise checks.Wrong(
            f"after {what} the model is in {'train' if training_after else 'eval'} mode; expected its previous "
            f"mode ({'train' if train else 'eval'}) restored"
        )


# ---------------------------------------------------------------- pack_sequences


def torch_pack(docs, block_size, eos_id):
    """Token by token: every document, then its eos, into one stream; whole blocks only."""
    stream, owner = [], []
    for i, doc in enumerate(docs):
        for t in [*doc.tolist(), eos_id]:
            stream.append(t)
            owner.append(i)
    n = len(stream) // block_size
    blocks = torch.tensor(stream[: n * block_size], dtype=torch.int64).view(n, block_size)
    return blocks, torch.tensor(owner[: n * block_size], dtype=torch.int64).view(n, block_size)


# name: (document lengths, block_size)
PACK_CASES = {
    "longer_and_shorter_than_a_block": ([11, 2, 3, 6], 4),
    "exact_fit": ([3, 1, 2], 3),  # 4 + 2 + 3 = 9 tokens: three whole blocks, no tail
    "empty_document": ([3, 0, 4], 3),
    "one_long_document": ([17], 5),
    "shorter_than_a_block": ([2, 1], 8),
    "block_size_one": ([2, 0, 1], 1),
}


def pack_case(name, device):
    lengths, block_size = PACK_CASES[name]
    g = torch.Generator().manual_seed(len(name))
    docs = [torch.randint(1, VOCAB, (n,), generator=g).to(device) for n in lengths]
    return docs, block_size, 0


def call_pack(lm, name, device):
    docs, block_size, eos_id = pack_case(name, device)
    what = f"pack_sequences([{', '.join(describe(d) for d in docs)}], block_size={block_size}, eos_id={eos_id})"
    got = rules.call(lm.pack_sequences, docs, block_size, eos_id, what=what)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise checks.Wrong(f"{what} returned {describe(got)}; expected a tuple (blocks, doc_ids)")
    want = torch_pack([d.cpu() for d in docs], block_size, eos_id)
    return got, want, what


def expect_equal_ints(got, want, device, what, explain):
    expect_tensor(got, shape=want.shape, dtype=torch.int64, device=device, what=what)
    if not torch.equal(got.cpu(), want):
        row = int((got.cpu() != want).any(dim=1).nonzero()[0])
        raise checks.Wrong(f"{what}, block {row}: got {got[row].tolist()}, expected {want[row].tolist()} ({explain})")


@pytest.mark.parametrize("case", list(PACK_CASES))
def test_pack_sequences_blocks(lm, device, case):
    (blocks, _), (want, _), what = call_pack(lm, case, device)
    expect_equal_ints(blocks, want, device, f"blocks of {what}", "each document then eos 0, concatenated; the incomplete tail dropped")


@pytest.mark.parametrize("case", list(PACK_CASES))
def test_pack_sequences_doc_ids(lm, device, case):
    (_, doc_ids), (_, want), what = call_pack(lm, case, device)
    expect_equal_ints(doc_ids, want, device, f"doc_ids of {what}", "the index in docs of each token's document; its eos belongs to it")


# ---------------------------------------------------------------- document_causal_mask


def torch_document_mask(doc_ids):
    n, T = doc_ids.shape
    mask = torch.zeros(n, T, T, dtype=torch.bool)
    for b in range(n):
        for i in range(T):
            for j in range(i + 1):
                mask[b, i, j] = bool(doc_ids[b, i] == doc_ids[b, j])
    return mask


MASK_CASES = ["longer_and_shorter_than_a_block", "one_long_document", "empty_document", "single_token_documents"]


def call_mask(lm, case, device):
    """(the learner's mask, the expected one, doc_ids, what) on pack_sequences' doc_ids (computed here)."""
    if case == "single_token_documents":  # every position its own document: only the diagonal
        doc_ids = torch.arange(12).view(2, 6)
    else:
        docs, block_size, eos_id = pack_case(case, device)
        _, doc_ids = torch_pack([d.cpu() for d in docs], block_size, eos_id)
    doc_ids = doc_ids.to(device)
    what = describe_call("document_causal_mask", doc_ids)
    got = rules.call(lm.document_causal_mask, doc_ids, what=what)
    want = torch_document_mask(doc_ids.cpu())
    expect_tensor(got, shape=want.shape, dtype=torch.bool, device=device, what=what)
    return got, want, doc_ids, what


@pytest.mark.parametrize("case", MASK_CASES)
def test_document_causal_mask(lm, device, case):
    """j <= i and the same document, on documents longer and shorter than a block."""
    got, want, doc_ids, what = call_mask(lm, case, device)
    if not torch.equal(got.cpu(), want):
        b = int((got.cpu() != want).flatten(1).any(dim=1).nonzero()[0])
        raise checks.Wrong(
            f"{what}, block {b} (doc_ids {doc_ids[b].tolist()}) returned (rows = queries, 1 = may attend)\n"
            f"{got[b].int().cpu()}\nexpected (j <= i and the same document)\n{want[b].int()}"
        )


def test_last_position_sees_its_whole_document(lm, device):
    """The last query of a block attends every position of its own document in the block
    (itself included), and nothing of the documents before it."""
    got, want, doc_ids, what = call_mask(lm, "longer_and_shorter_than_a_block", device)
    last_got, last_want = got[:, -1].cpu(), want[:, -1]  # (N, T): the last query's row
    if not torch.equal(last_got, last_want):
        b = int((last_got != last_want).any(dim=1).nonzero()[0])
        raise checks.Wrong(
            f"{what}: in block {b} (doc_ids {doc_ids[b].tolist()}) the last query may attend {last_got[b].int().tolist()}; "
            f"expected {last_want[b].int().tolist()} (every key of its document up to itself)"
        )


def test_document_causal_mask_no_loop(lm, device):
    """The same aten ops for 2 blocks of 4 positions as for 6 blocks of 12."""

    def ops(n, T):
        doc_ids = (torch.arange(n * T, device=device) // 3).view(n, T)
        return rules.count_ops(lm.document_causal_mask, doc_ids)

    checks.expect_same_op_count(
        lambda: ops(2, 4), lambda: ops(6, 12), what="document_causal_mask", small_desc="(2, 4)", large_desc="(6, 12)"
    )
