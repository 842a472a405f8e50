"""Grader for the embeddings kata: embedding, Embedding and embedding_bag.

Values against torch's own ops (F.embedding, F.embedding_bag) on float64 copies of the
same tables; gradients against torch's autograd, the padding row's (zero) gradient
included; the module's layout, its N(0, 1) initialisation (a statistical check whose
false-failure rate is below 1e-6, derived below) and its zeroed padding row; half precision
against torch's own error in that dtype; rules (no torch embedding kernel, inputs
unmodified) on every call; and work: the same aten ops for more ids or bags (no Python
loop), and FLOPs and the largest tensor made that do not grow with the vocabulary (a
one-hot matrix times the table does).
"""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kata import checks, course, harness
from kata.checks import describe_call, expect_close, golden, randn

TOPIC = course.get("embeddings")
rules = checks.Rules(TOPIC.forbidden)
LOW_PRECISION = [torch.bfloat16, torch.float16]
MODES = ["sum", "mean", "max"]
V, D = 20, 6  # the value checks' table


@pytest.fixture(scope="module")
def emb(impl):
    return impl.load("embeddings")


# ---------------------------------------------------------------- inputs


def randint(*shape, high, seed, device, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g).to(device=device, dtype=dtype)


def table(v=V, d=D, *, seed=1, device, dtype=torch.float32):
    """A seeded (v, d) table, rounded once to dtype (the golden starts from the rounded values)."""
    return randn(v, d, seed=seed, device=device).to(dtype)


def embedding_case(name: str, device):
    """(ids, weight, kwargs) for one named case of embedding."""
    w = table(device=device)
    ids = randint(3, 5, high=V, seed=2, device=device)
    with_pad = ids.clone()
    with_pad[0, 1] = with_pad[2, 4] = 2  # the padding id twice, and its row is not zero
    with_last = ids.clone()
    with_last[1, 0] = with_last[1, 3] = V - 1  # padding_idx=-1 names row V - 1
    cases = {
        "1d": (randint(7, high=V, seed=3, device=device), w, {}),
        "2d": (ids, w, {}),
        # Any shape: code that reshapes to a fixed (B, T, D) fits 2-d ids only.
        "3d": (randint(2, 3, 4, high=V, seed=4, device=device), w, {}),
        "scalar": (torch.tensor(7, device=device), w, {}),
        "repeated_ids": (randint(12, high=3, seed=5, device=device), w, {}),
        "int32_ids": (ids.to(torch.int32), w, {}),
        "non_contiguous_ids": (randint(5, 3, high=V, seed=6, device=device).t(), w, {}),
        "non_contiguous_weight": (ids, table(D, V, device=device).t(), {}),
        "no_ids": (torch.zeros(0, dtype=torch.int64, device=device), w, {}),
        "float64": (ids, table(device=device, dtype=torch.float64), {}),
        "padding_idx": (with_pad, w, {"padding_idx": 2}),
        "padding_idx_negative": (with_last, w, {"padding_idx": -1}),
        "padding_idx_absent": (ids.clamp(min=1), w, {"padding_idx": 0}),
    }
    return cases[name]


EMBEDDING_CASES = ["1d", "2d", "3d", "scalar", "repeated_ids", "int32_ids", "non_contiguous_ids", "non_contiguous_weight",
                   "no_ids", "float64", "padding_idx", "padding_idx_negative", "padding_idx_absent"]  # fmt: skip


def bag_case(name: str, device):
    """(ids, weight, offsets) for one named case of embedding_bag."""
    w = table(device=device)

    def ids(n, seed, high=V, dtype=torch.int64):
        return randint(n, high=high, seed=seed, device=device, dtype=dtype)

    def offs(*values, dtype=torch.int64):
        return torch.tensor(values, device=device, dtype=dtype)

    cases = {
        # Bags of 3, 1, 4 and 2: the mean divides by each bag's own size.
        "uneven_bags": (ids(10, 11), w, offs(0, 3, 4, 8)),
        # Empty bags first, in the middle and last (the last offset equals N).
        "empty_bags": (ids(10, 12), w, offs(0, 0, 3, 3, 7, 10)),
        "one_bag": (ids(6, 13), w, offs(0)),
        "one_id_per_bag": (ids(5, 14), w, offs(0, 1, 2, 3, 4)),
        # Ids repeated within a bag: their rows count (and, for max, tie) once per copy.
        "repeated_ids": (ids(9, 15, high=4), w, offs(0, 4, 6)),
        "2d_ids": (randint(4, 3, high=V, seed=16, device=device), w, None),
        "int32": (ids(10, 17, dtype=torch.int32), w, offs(0, 3, 4, 8, dtype=torch.int32)),
        "no_ids": (ids(0, 18), w, offs(0, 0)),
        "non_contiguous_weight": (ids(10, 19), table(D, V, device=device).t(), offs(0, 5, 6)),
    }
    return cases[name]


BAG_CASES = ["uneven_bags", "empty_bags", "one_bag", "one_id_per_bag", "repeated_ids", "2d_ids", "int32", "no_ids", "non_contiguous_weight"]


def torch_bag(ids, weight, offsets, mode):
    return F.embedding_bag(ids, weight, offsets, mode=mode)


# ---------------------------------------------------------------- embedding


@pytest.mark.parametrize("case", EMBEDDING_CASES)
def test_embedding_matches_torch(emb, device, case):
    """Exactly the rows of weight, in the shape ids.shape + (D,); the padding row as it is."""
    ids, w, kwargs = embedding_case(case, device)
    what = describe_call("embedding", ids, w, **kwargs)
    got = rules.call(emb.embedding, ids, w, what=what, **kwargs)
    # A lookup is exact in every dtype, so no baseline (checks.max_error cannot take the empty output of "no_ids" either).
    expect_close(got, F.embedding(golden(ids), golden(w), **kwargs), what=what, dtype=w.dtype, device=device)


def expect_weight_gradient(call, ids, w, torch_call, *, what, device):
    """weight.grad after the learner's call(ids, weight, upstream) against torch's."""
    leaf = w.detach().clone().requires_grad_()
    gold = golden(w).requires_grad_()
    want_out = torch_call(golden(ids), gold)
    upstream = randn(*want_out.shape, seed=9, device=device)
    out = call(ids, leaf, upstream)
    checks.expect_tensor(out, shape=want_out.shape, dtype=w.dtype, device=device, what=what)
    if not out.requires_grad:
        raise checks.Wrong(f"{what} returned a tensor with no autograd history: is weight detached?")
    if leaf.grad is None:
        raise checks.Wrong(f"{what}: no gradient reaches weight; is it detached?")
    (want,) = torch.autograd.grad(want_out, gold, golden(upstream))
    expect_close(leaf.grad, want, what=f"weight.grad after {what}", dtype=w.dtype, device=device)


@pytest.mark.parametrize("case", ["2d", "repeated_ids", "padding_idx", "padding_idx_negative", "padding_idx_absent"])
def test_embedding_gradients_match_torch(emb, device, case):
    """weight.grad: summed over repeated ids, zero on the padding row (which is looked up)."""
    ids, w, kwargs = embedding_case(case, device)
    what = describe_call("embedding", ids, w, **kwargs)
    expect_weight_gradient(
        lambda i, leaf, up: rules.call(emb.embedding, i, leaf, what=what, backward=up, **kwargs),
        ids, w, lambda i, gw: F.embedding(i, gw, **kwargs), what=what, device=device,
    )  # fmt: skip


# ---------------------------------------------------------------- Embedding


def make_module(emb, v, d, padding_idx=None):
    what = f"Embedding({v}, {d}{'' if padding_idx is None else f', padding_idx={padding_idx}'})"
    kwargs = {} if padding_idx is None else {"padding_idx": padding_idx}
    return rules.call(emb.Embedding, v, d, what=what, **kwargs), what


@pytest.mark.parametrize("padding_idx", [None, 3, -2], ids=lambda p: f"padding_idx={p}")
def test_embedding_module_layout(emb, padding_idx):
    v, d = 10, 4
    m, what = make_module(emb, v, d, padding_idx)
    params = dict(m.named_parameters())
    if list(params) != ["weight"]:
        raise checks.Wrong(f"{what} has parameters {list(params)}, expected exactly one: 'weight' (an nn.Parameter)")
    w = params["weight"]
    checks.expect_tensor(w.detach(), shape=(v, d), dtype=torch.float32, device="cpu", what=f"{what}.weight")
    if not w.requires_grad:
        raise checks.Wrong(f"{what}.weight has requires_grad=False: it must be trainable")
    if list(m.state_dict()) != ["weight"]:
        raise checks.Wrong(f"{what}.state_dict() has keys {list(m.state_dict())}, expected ['weight']")
    want = {"num_embeddings": v, "embedding_dim": d, "padding_idx": None if padding_idx is None else padding_idx % v}
    for name, value in want.items():
        got = getattr(m, name, "missing")
        if got != value or type(got) is not type(value):
            raise checks.Wrong(f"{what}.{name} is {got!r}, expected {value!r}" + (" (a negative padding_idx is stored as V + padding_idx, as nn.Embedding stores it)" if name == "padding_idx" else ""))


# The initialisation, statistically. A correct Embedding(512, 32) draws n = 16,384 entries
# independently from N(0, 1), however it draws them. Their mean is then exactly N(0, 1/n):
# |mean| > 5.5 / sqrt(n) has probability 3.8e-8. Their sum of squares S is chi-squared with
# n degrees of freedom, and by the Laurent-Massart bounds (Ann. Statist. 2000, Lemma 1)
# P(S - n >= 2 sqrt(n t) + 2 t) <= e^-t and P(n - S >= 2 sqrt(n t)) <= e^-t; with t = 15
# each tail has probability at most 3.1e-7, so the mean square lies in [0.9395, 1.0623].
# A correct implementation fails with probability at most 3.8e-8 + 2 * 3.1e-7 = 6.5e-7 < 1e-6.
# N(0, 0.02) (GPT-2's init) has mean square 4e-4, uniform(-1, 1) 1/3, Xavier 0.004.
INIT_V, INIT_D, INIT_T, INIT_MEAN_Z = 512, 32, 15.0, 5.5


def init_bounds(n: int) -> tuple[float, float, float]:
    """(largest |mean|, lowest and highest mean square) a correct N(0, 1) init of n entries passes."""
    return INIT_MEAN_Z / math.sqrt(n), 1 - 2 * math.sqrt(n * INIT_T) / n, 1 + (2 * math.sqrt(n * INIT_T) + 2 * INIT_T) / n


def test_embedding_module_init_is_standard_normal(emb):
    """Embedding(512, 32): the entries' mean and mean square within the bounds a correct
    N(0, 1) draw passes with probability above 1 - 1e-6 (derivation above)."""
    m, what = make_module(emb, INIT_V, INIT_D)
    w = dict(m.named_parameters())["weight"].detach().double()
    checks.expect_tensor(w.float(), shape=(INIT_V, INIT_D), dtype=torch.float32, device="cpu", what=f"{what}.weight")
    n = w.numel()
    mean_bound, low, high = init_bounds(n)
    mean, square = w.mean().item(), w.square().mean().item()
    if abs(mean) > mean_bound or not low <= square <= high:
        raise checks.Wrong(
            f"{what}.weight has mean {mean:.4g} and mean square {square:.4g}; entries drawn from N(0, 1), as nn.Embedding "
            f"draws them, give |mean| <= {mean_bound:.3g} and a mean square in [{low:.4f}, {high:.4f}] (a correct init fails "
            "this with probability below 1e-6): use torch.randn, not a small std or a uniform init"
        )


@pytest.mark.parametrize("padding_idx", [3, -1], ids=lambda p: f"padding_idx={p}")
def test_embedding_module_padding_row_starts_at_zero(emb, padding_idx):
    v, d = 10, 4
    m, what = make_module(emb, v, d, padding_idx)
    w = dict(m.named_parameters())["weight"].detach()
    row = padding_idx % v
    if not torch.equal(w[row], torch.zeros(d)):
        raise checks.Wrong(f"{what}.weight[{row}] is {w[row].tolist()}: the padding row must start as zeros")
    others = torch.cat([w[:row], w[row + 1 :]])
    if (others == 0).all(dim=1).any():
        raise checks.Wrong(f"{what}.weight has all-zero rows other than the padding row {row}: only that row starts as zeros")


def seeded_module(emb, v, d, padding_idx, device):
    """The learner's Embedding with a seeded table whose padding row is not zero (a loaded table)."""
    m, what = make_module(emb, v, d, padding_idx)
    w = table(v, d, seed=7, device="cpu")
    rules.call(harness.assign_parameters, m, {"weight": w})
    return m.to(device), w.to(device), what


@pytest.mark.parametrize("padding_idx", [None, 3, -1], ids=lambda p: f"padding_idx={p}")
def test_embedding_module_matches_torch(emb, device, padding_idx):
    v, d = 10, 4
    m, w, what = seeded_module(emb, v, d, padding_idx, device)
    ids = randint(3, 6, high=v, seed=8, device=device)
    ids[0, 0] = ids[2, 5] = (padding_idx or 0) % v
    kwargs = {} if padding_idx is None else {"padding_idx": padding_idx}
    call = describe_call(f"{what}.forward", ids)
    got = rules.call(m, ids, what=call)
    expect_close(got, F.embedding(golden(ids), golden(w), **kwargs), what=call, dtype=torch.float32, device=device)


@pytest.mark.parametrize("padding_idx", [None, 3, -1], ids=lambda p: f"padding_idx={p}")
def test_embedding_module_padding_row_gets_no_gradient(emb, device, padding_idx):
    """One backward through the module: weight.grad as torch's, zero on the padding row."""
    v, d = 10, 4
    m, w, what = seeded_module(emb, v, d, padding_idx, device)
    ids = randint(3, 6, high=v, seed=8, device=device)
    ids[0, 0] = ids[2, 5] = (padding_idx or 0) % v
    kwargs = {} if padding_idx is None else {"padding_idx": padding_idx}
    call = describe_call(f"{what}.forward", ids)
    upstream = randn(3, 6, d, seed=9, device=device)
    out = rules.call(m, ids, what=call, backward=upstream)
    checks.expect_tensor(out, shape=(3, 6, d), dtype=torch.float32, device=device, what=call)
    weight = m.weight  # after the backward: its .grad comes with it
    if not isinstance(weight, torch.Tensor) or weight.grad is None:
        raise checks.Wrong(f"after backward through {call}, weight.grad is None: no gradient reaches the table")
    gw = golden(w).requires_grad_()
    (want,) = torch.autograd.grad(F.embedding(golden(ids), gw, **kwargs), gw, golden(upstream))
    expect_close(weight.grad, want, what=f"weight.grad after {call}", dtype=torch.float32, device=device)


@pytest.mark.parametrize("padding_idx", [10, -11], ids=lambda p: f"padding_idx={p}")
def test_embedding_module_rejects_padding_idx_out_of_range(emb, padding_idx):
    rules.expect_raises(ValueError, emb.Embedding, 10, 4, padding_idx=padding_idx, what=f"Embedding(10, 4, padding_idx={padding_idx})")


# ---------------------------------------------------------------- embedding_bag


@pytest.mark.parametrize("case", BAG_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_matches_torch(emb, device, mode, case):
    ids, w, offsets = bag_case(case, device)
    what = describe_call("embedding_bag", ids, w, offsets, mode=mode)
    got = rules.call(emb.embedding_bag, ids, w, offsets, mode=mode, what=what)
    want = torch_bag(golden(ids), golden(w), golden(offsets), mode)
    expect_close(got, want, what=what, dtype=w.dtype, device=device, baseline=torch_bag(ids, w, offsets, mode))


@pytest.mark.parametrize("case", ["uneven_bags", "empty_bags", "repeated_ids", "2d_ids"])
@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_gradients_match_torch(emb, device, mode, case):
    """weight.grad: per bag in sum, divided by the bag's size in mean, to the maximum's row in max."""
    ids, w, offsets = bag_case(case, device)
    what = describe_call("embedding_bag", ids, w, offsets, mode=mode)
    expect_weight_gradient(
        lambda i, leaf, up: rules.call(emb.embedding_bag, i, leaf, offsets, mode=mode, what=what, backward=up),
        ids, w, lambda i, gw: torch_bag(i, gw, golden(offsets), mode), what=what, device=device,
    )  # fmt: skip


def test_embedding_bag_rejects_unknown_mode(emb, device):
    ids, w, offsets = bag_case("uneven_bags", device)
    what = describe_call("embedding_bag", ids, w, offsets, mode="median")
    rules.expect_raises(ValueError, emb.embedding_bag, ids, w, offsets, mode="median", what=what)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("op", ["embedding", "embedding_bag_sum", "embedding_bag_mean", "embedding_bag_max"])
def test_low_precision(emb, device, op, dtype):
    """A bfloat16 or float16 table in, the same dtype out: exact rows for embedding, the
    bag's sum or mean within 4x torch's own error in that dtype."""
    checks.need_dtype(dtype, device)
    if op == "embedding":
        ids, w, kwargs = embedding_case("padding_idx", device)
        w = w.to(dtype)
        what = describe_call(op, ids, w, **kwargs)
        got = rules.call(emb.embedding, ids, w, what=what, **kwargs)
        expect_close(got, F.embedding(golden(ids), golden(w), **kwargs), what=what, dtype=dtype, device=device)
        return
    mode = op.removeprefix("embedding_bag_")
    ids, w, offsets = bag_case("uneven_bags", device)
    w = (w * 30).to(dtype)  # values up to ~100: bfloat16 keeps 3 significant digits of them
    what = describe_call("embedding_bag", ids, w, offsets, mode=mode)
    got = rules.call(emb.embedding_bag, ids, w, offsets, mode=mode, what=what)
    want = torch_bag(golden(ids), golden(w), golden(offsets), mode)
    expect_close(got, want, what=what, dtype=dtype, device=device, baseline=torch_bag(ids, w, offsets, mode))


# ---------------------------------------------------------------- work


def embedding_ops(emb, shape, device):
    """Every aten op of one call, views included: a loop of row views (weight[i] for each
    int id) then one torch.stack runs no more compute ops for more ids, only more views.
    Both sizes are contiguous 2-d ids, so the same reshapes are views at both."""
    ids = randint(*shape, high=V, seed=21, device=device)
    return Counter(op.name for op in rules.record_ops(emb.embedding, ids, table(device=device), padding_idx=0))


def test_embedding_no_loop_over_ids(emb, device):
    """The same aten ops, views included, for (2, 3) ids as for (5, 7), padding_idx given."""
    checks.expect_same_op_count(
        partial(embedding_ops, emb, (2, 3), device), partial(embedding_ops, emb, (5, 7), device),
        what="embedding(ids, weight, padding_idx=0)", small_desc="ids (2, 3)", large_desc="ids (5, 7)",
    )  # fmt: skip


def bag_ops(emb, n_bags, mode, device):
    """Bags of sizes 2, 0, 3, 1, 2, 0, 3, 1, ...: 4 bags hold 6 ids, 12 bags 18."""
    sizes = [(2, 0, 3, 1)[b % 4] for b in range(n_bags)]
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0)[:-1].tolist()], device=device)
    ids = randint(sum(sizes), high=V, seed=22, device=device)
    return rules.count_ops(emb.embedding_bag, ids, table(device=device), offsets, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_embedding_bag_no_loop_over_bags(emb, device, mode):
    """The same aten ops for 4 bags as for 12 (empty ones among them)."""
    checks.expect_same_op_count(
        partial(bag_ops, emb, 4, mode, device), partial(bag_ops, emb, 12, mode, device),
        what=f"embedding_bag(mode={mode!r})", small_desc="4 bags (6 ids)", large_desc="12 bags (18 ids)",
    )  # fmt: skip


# Two tables of 64 and 4,096 rows, D = 8, the same 24 ids: a gather does the same work for
# both (0 FLOPs, its largest tensor the (24, 8) rows), a one-hot matmul 2 * 24 * V * 8 FLOPs
# and a (24, V) one-hot matrix: 24,576 and 1,572,864 FLOPs, 1,536 and 98,304 elements.
SMALL_V, LARGE_V, WORK_D = 64, 4096, 8


def vocabulary_work(emb, op, v, device, *, measure):
    ids = randint(4, 6, high=SMALL_V, seed=23, device=device)
    w = table(v, WORK_D, seed=24, device=device)
    if op == "embedding":
        return measure(emb.embedding, ids, w, padding_idx=0)
    offsets = torch.tensor([0, 5, 5, 11, 20], device=device)
    return measure(emb.embedding_bag, ids.reshape(-1), w, offsets, mode=op.removeprefix("embedding_bag_"))


WORK_OPS = ["embedding", "embedding_bag_sum", "embedding_bag_mean", "embedding_bag_max"]


def label(op: str) -> str:
    return op if op == "embedding" else f"embedding_bag(mode={op.removeprefix('embedding_bag_')!r})"


@pytest.mark.parametrize("op", WORK_OPS)
def test_flops_do_not_grow_with_vocabulary(emb, device, op):
    """FLOPs (torch's FlopCounterMode: matmuls) for a 4,096-row table no more than for 64 rows."""
    small = vocabulary_work(emb, op, SMALL_V, device, measure=rules.count_flops)
    large = vocabulary_work(emb, op, LARGE_V, device, measure=rules.count_flops)
    if large > small:
        raise checks.Wrong(
            f"{label(op)} on the same 24 ids did {small:,} FLOPs with a ({SMALL_V}, {WORK_D}) table but {large:,} with a "
            f"({LARGE_V}, {WORK_D}) one: its work grows with the vocabulary (a one-hot matrix times the table?). "
            "Gather the rows the ids name (index_select or indexing): the work is the number of ids times D"
        )


@pytest.mark.parametrize("op", WORK_OPS)
def test_memory_does_not_grow_with_vocabulary(emb, device, op):
    """The largest tensor made for a 4,096-row table no larger than for 64 rows."""
    small = checks.largest_new_tensor(vocabulary_work(emb, op, SMALL_V, device, measure=rules.record_ops))
    large = checks.largest_new_tensor(vocabulary_work(emb, op, LARGE_V, device, measure=rules.record_ops))
    if large[0] > small[0]:
        raise checks.Wrong(
            f"{label(op)} on the same 24 ids made a tensor of {large[0]:,} elements (shape {tuple(large[1])}, by {large[2]}) with a "
            f"({LARGE_V}, {WORK_D}) table, but at most {small[0]:,} with a ({SMALL_V}, {WORK_D}) one: no one-hot matrix and no "
            "copy or masked version of the whole table; work on the rows the ids name"
        )
