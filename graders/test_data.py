"""Grader for the data kata: PadCollate, length_buckets and make_loader.

PadCollate is compared exactly with a padding built here sample by sample, on batches with
empty samples, pad_id inside the real tokens, int32 and non-contiguous samples. The buckets
are checked as sets (every index once, at most one short batch), for their padding against
the exact expected padding of random batching, for their order (the number of ascents
between consecutive batches against the Eulerian distribution of a random order), for
changing from epoch to epoch, and for drawing only from the generator they are given. The
loader runs in the executor on a dataset built here whose samples draw from torch, random
and numpy: twice with the same seed from different global random states, with 0 and with 2
worker processes, over two epochs, and the caller's global random states are compared
before and after; its batches are collated into plain rows by a collate_fn of the
grader's (RowsCollate says why), torch's default collate is checked without workers.
Inputs unmodified, on every call.

Statistical checks and their false-failure rates (for code that meets the docstring,
however it draws its random numbers):
- test_buckets_reduce_padding: 0. For pools of 50 * batch_size sorted by length, every
  shuffle gives padding <= pools * (batch_size - 1) * (longest - shortest) (within a sorted
  pool the batches' length ranges are disjoint); that bound is 0.042 to 0.054 of random
  batching's expected padding on the cases here (the grader checks it is below 0.1), the
  limit 0.25.
- test_buckets_come_in_random_order: at most 1e-6. Given the batches, a random order makes
  the number of strict ascents (and of strict descents) of the batches' longest lengths
  at most that of a uniform random permutation of 256 batches (ties only remove ascents),
  whose law is Eulerian: the limit (150 of 255 pairs; mean 127.5, sd 4.6) is the
  smallest count whose upper tail is below 5e-7 (it is 2.8e-7), for ascents and for
  descents each.
- test_buckets_change_between_epochs: below 1e-10. A batch of the second call can be a
  batch of the first only if its 16 members shared one pool in the first call (distinct
  lengths): probability <= sum over pools of C(pool, 16) / C(4096, 16) = 2.0e-11 (pools
  of 800, 800, 800, 800, 800, 96); so E[repeated batches] <= 256 * 2.0e-11 = 5.1e-9 and,
  by Markov, P(more than 128) < 4e-11.
- The loader's order checks (shuffled, epochs or seeds differ) fail a correct loader only
  if two independent shuffles of 22 samples coincide, 1 / 22! = 9e-22; its random-draw
  checks only if two float64 draws (53 random bits) coincide, below 3 * 231 * 2**-53 =
  8e-14 per epoch (231 pairs of samples, three generators).

There is no speed check: loading time here is the dataset's and the worker start's, and
no mistake of the kata makes the work grow (padding is measured directly).
"""

from __future__ import annotations

import math
import random
from functools import cache

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kata import checks, course
from kata.checks import describe, expect_tensor

TOPIC = course.get("data")
rules = checks.Rules(TOPIC.forbidden)


@pytest.fixture(scope="module")
def data(impl):
    return impl.load("data")


# ---------------------------------------------------------------- PadCollate


def make_samples(lengths, device, *, seed, pad_id=None, dtype=torch.int64, strided=False):
    """One 1-d tensor of token ids per length, ids in 1..99; with pad_id, every third
    token is pad_id (a real token equal to the pad id)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for n in lengths:
        ids = torch.randint(1, 100, (2 * n if strided else n,), generator=g)
        if pad_id is not None:
            ids[::3] = pad_id
        ids = ids.to(device=device, dtype=dtype)
        samples.append(ids[::2] if strided else ids)  # a non-contiguous view of n ids
    return samples


def reference_padding(samples, pad_id, device):
    """What PadCollate must return, built one sample at a time."""
    t_max = max(len(s) for s in samples)
    ids = torch.full((len(samples), t_max), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(samples), t_max, dtype=torch.bool)
    for i, s in enumerate(samples):
        ids[i, : len(s)] = s.cpu().long()
        mask[i, : len(s)] = True
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.int64)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "lengths": lengths.to(device)}


# name: (lengths, pad_id, options)
COLLATE_CASES = {
    "mixed_lengths": ([5, 2, 7, 1], 0, {}),
    "pad_id_is_a_real_token": ([4, 6, 2], 0, {"pad_in_samples": True}),
    "large_pad_id_in_samples": ([3, 7, 5], 50256, {"pad_in_samples": True}),
    "an_empty_sample": ([3, 0, 4], 0, {}),
    "all_empty": ([0, 0], 0, {}),
    "same_lengths": ([4, 4, 4], 0, {}),
    "single_sample": ([6], 0, {}),
    "int32_samples": ([2, 5, 3], 0, {"dtype": torch.int32}),
    "non_contiguous_samples": ([3, 6, 1], 0, {"strided": True}),
}


def collate_case(case, device):
    lengths, pad_id, options = COLLATE_CASES[case]
    samples = make_samples(
        lengths, device, seed=len(case), pad_id=pad_id if options.get("pad_in_samples") else None,
        dtype=options.get("dtype", torch.int64), strided=options.get("strided", False),
    )  # fmt: skip
    what = f"PadCollate({pad_id})([{', '.join(describe(s) for s in samples)}])"
    return samples, pad_id, what


def run_collate(data, case, device):
    samples, pad_id, what = collate_case(case, device)
    collate = rules.call(data.PadCollate, pad_id, what=f"PadCollate({pad_id})")
    out = rules.call(collate, samples, what=what)
    if not isinstance(out, dict) or set(out) != {"input_ids", "attention_mask", "lengths"}:
        keys = sorted(out) if isinstance(out, dict) else None
        raise checks.Wrong(
            f"{what} returned {type(out).__name__}{f' with keys {keys}' if keys is not None else ''}; "
            "expected a dict with exactly the keys 'input_ids', 'attention_mask' and 'lengths'"
        )
    return out, reference_padding(samples, pad_id, device), what


def expect_equal(actual, expected, *, what, how):
    expect_tensor(actual, shape=expected.shape, dtype=expected.dtype, device=expected.device, what=what)
    if not torch.equal(actual.cpu(), expected.cpu()):
        bad = (actual.cpu() != expected.cpu()).nonzero()
        first = tuple(int(i) for i in bad[0])
        raise checks.Wrong(
            f"{what} is wrong at {len(bad)} of {expected.numel()} positions; first at {first}: "
            f"got {actual.cpu()[first].item()}, expected {expected.cpu()[first].item()} ({how})\n"
            f"  got      {actual.cpu().tolist()}\n  expected {expected.cpu().tolist()}"
        )


@pytest.mark.parametrize("case", list(COLLATE_CASES))
def test_pad_collate_input_ids(data, device, case):
    """input_ids: (B, T_max) int64, each sample in its row's first positions, pad_id after."""
    out, want, what = run_collate(data, case, device)
    expect_equal(out["input_ids"], want["input_ids"], what=f"input_ids of {what}", how="right padding to the batch's longest sample")


@pytest.mark.parametrize("case", list(COLLATE_CASES))
def test_pad_collate_attention_mask(data, device, case):
    """attention_mask: (B, T_max) bool, True exactly at real positions, pad_id tokens included."""
    out, want, what = run_collate(data, case, device)
    expect_equal(
        out["attention_mask"], want["attention_mask"], what=f"attention_mask of {what}",
        how="True at each sample's real positions, whatever their ids; False at padding",
    )  # fmt: skip


@pytest.mark.parametrize("case", list(COLLATE_CASES))
def test_pad_collate_lengths(data, device, case):
    """lengths: (B,) int64, each sample's length."""
    out, want, what = run_collate(data, case, device)
    expect_equal(out["lengths"], want["lengths"], what=f"lengths of {what}", how="the number of tokens of each sample")


# ---------------------------------------------------------------- length_buckets


def uniform_lengths(n, seed):
    return torch.randint(1, 513, (n,), generator=torch.Generator().manual_seed(seed))


def long_tailed_lengths(n, seed):
    """Lognormal lengths (median 55, a few near 512), as token counts of real text are."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (4.0 + 0.9 * z).exp().round().clamp(1, 512).long()


def distinct_lengths(n, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)) + 1


def call_buckets(data, lengths, batch_size, generator, *, as_list=False):
    arg = lengths.tolist() if as_list else lengths
    what = f"length_buckets({'list of ' + str(len(arg)) + ' ints' if as_list else describe(lengths)}, {batch_size}, generator=...)"
    out = rules.call(data.length_buckets, arg, batch_size, generator=generator, what=what)
    if not isinstance(out, list) or not all(isinstance(b, list) and all(type(i) is int for i in b) for b in out):
        raise checks.Wrong(f"{what} returned {describe(out)[:200]}; expected a list of batches, each a list of Python int indices")
    return out, what


# name: (N, batch_size, lengths, pass lengths as a list)
COVER_CASES = {
    "remainder_batch": (1000, 32, "uniform", False),
    "exact_batches": (4096, 16, "long_tailed", False),
    "lengths_as_list": (300, 8, "uniform", True),
    "fewer_than_a_batch": (5, 16, "uniform", False),
    "batch_size_one": (7, 1, "uniform", False),
    "no_sequences": (0, 4, "uniform", False),
}
LENGTHS = {"uniform": uniform_lengths, "long_tailed": long_tailed_lengths, "distinct": distinct_lengths}


def cover_case(data, case):
    n, batch_size, kind, as_list = COVER_CASES[case]
    lengths = LENGTHS[kind](n, seed=n)
    batches, what = call_buckets(data, lengths, batch_size, torch.Generator().manual_seed(3), as_list=as_list)
    return n, batch_size, batches, what


@pytest.mark.parametrize("case", list(COVER_CASES))
def test_buckets_hold_every_index_once(data, case):
    """Every index 0..N-1 is in exactly one batch: none dropped, none twice."""
    n, _, batches, what = cover_case(data, case)
    seen = sorted(i for b in batches for i in b)
    if seen != list(range(n)):
        twice = sorted({i for i in seen if seen.count(i) > 1})[:5] if len(seen) < 2000 else "?"
        missing = sorted(set(range(n)) - set(seen))
        raise checks.Wrong(
            f"{what} returned {len(seen)} indices in {len(batches)} batches; expected each of 0..{n - 1} exactly once "
            f"({len(missing)} missing, e.g. {missing[:5]}; repeated: {twice}; out of range: "
            f"{sorted(i for i in set(seen) if not 0 <= i < n)[:5]}). Keep the short last batch."
        )


@pytest.mark.parametrize("case", list(COVER_CASES))
def test_buckets_are_full_but_one(data, case):
    """Every batch holds batch_size indices, except at most one, which holds fewer."""
    n, batch_size, batches, what = cover_case(data, case)
    sizes = [len(b) for b in batches]
    short = [s for s in sizes if s != batch_size]
    if len(short) > 1 or any(s > batch_size or s == 0 for s in short) or sum(sizes) > n:
        raise checks.Wrong(
            f"{what} returned batches of sizes {sorted(sizes)[:12]}{'...' if len(sizes) > 12 else ''}; expected "
            f"{n // batch_size} of {batch_size}{f' and one of {n % batch_size}' if n % batch_size else ''}: make each "
            "pool a multiple of batch_size, so that only the very last batch can be short"
        )


def expected_random_padding(lengths, batch_size):
    """E[total padding] of random batches of batch_size (N a multiple of it): every batch is
    a uniform random batch_size-subset, whose longest length is the j-th smallest of all
    with probability (C(j, k) - C(j - 1, k)) / C(N, k)."""
    values = sorted(int(v) for v in lengths)
    n, k = len(values), batch_size
    total = math.comb(n, k)
    e_max = sum(v * (math.comb(j, k) - math.comb(j - 1, k)) for j, v in enumerate(values, start=1)) / total
    return n * e_max - sum(values)


def padding(lengths, batches):
    return sum(len(b) * max(int(lengths[i]) for i in b) - sum(int(lengths[i]) for i in b) for b in batches if b)


PADDING_LIMIT = 0.25
# name: (lengths, batch_size); N = 4096
PADDING_CASES = {"uniform_16": ("uniform", 16), "uniform_32": ("uniform", 32), "long_tailed_16": ("long_tailed", 16), "long_tailed_32": ("long_tailed", 32)}


@pytest.mark.parametrize("case", list(PADDING_CASES))
def test_buckets_reduce_padding(data, case):
    """Total padding at most a quarter of random batching's expected padding (4096 lengths)."""
    kind, batch_size = PADDING_CASES[case]
    lengths = LENGTHS[kind](4096, seed=11)
    random_padding = expected_random_padding(lengths, batch_size)
    pools = math.ceil(4096 / (50 * batch_size))
    bound = pools * (batch_size - 1) * int(lengths.max() - lengths.min()) / random_padding
    if bound > 0.4 * PADDING_LIMIT:
        raise RuntimeError(f"grader bug: the pooled sort's worst case {bound:.3f} is too close to the limit")
    batches, what = call_buckets(data, lengths, batch_size, torch.Generator().manual_seed(5))
    got = padding(lengths, batches)
    if got > PADDING_LIMIT * random_padding:
        raise checks.Wrong(
            f"{what} gives batches with {got} padding tokens in all, {got / random_padding:.2f} of random batching's "
            f"expected {random_padding:.0f} (limit {PADDING_LIMIT}; sorting pools of 50 * batch_size by length gives at "
            f"most {bound:.2f}): sort the indices of each pool by length before cutting it into batches"
        )


def test_buckets_same_generator_state_same_batches(data):
    """Two generators seeded alike give the same batches, whatever torch's global generator holds."""
    lengths = uniform_lengths(1000, seed=2)
    runs = []
    for global_seed in (1, 2):
        set_global_rngs(data, global_seed)
        runs.append(call_buckets(data, lengths, 16, torch.Generator().manual_seed(7)))
    (first, what), (second, _) = runs
    if first != second:
        raise checks.Wrong(
            f"{what} gave different batches from two generators seeded alike (torch's global generator seeded "
            "differently before each call): draw every random number from `generator` (torch.randperm(n, generator=g))"
        )


def test_buckets_advance_the_generator(data):
    """A call advances the generator, and the next call with it (the next epoch) gives other batches."""
    lengths = uniform_lengths(1000, seed=2)
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    first, what = call_buckets(data, lengths, 16, g)
    if torch.equal(g.get_state(), state):
        raise checks.Wrong(f"{what} left the generator's state as it was: draw from it (not from a copy, nor from a generator re-seeded with generator.initial_seed())")
    second, _ = call_buckets(data, lengths, 16, g)
    if first == second:
        raise checks.Wrong(f"two calls of {what} with the same generator (two epochs) gave the same batches in the same order")


def test_buckets_leave_global_rng_alone(data):
    """Neither torch's global generator, nor random's, nor numpy's is used or reseeded."""
    lengths = uniform_lengths(1000, seed=2)
    set_global_rngs(data, 9)
    before = rng_states(data)
    _, what = call_buckets(data, lengths, 16, torch.Generator().manual_seed(7))
    expect_same_rng_states(before, rng_states(data), what=what)


@cache
def ascent_limit(m: int, tail: float = 5e-7) -> int:
    """The least t with P(more than t ascents) < tail for a uniform random permutation of m
    items: the Eulerian numbers A(m, k) (permutations with k ascents), by their recurrence,
    in exact integers."""
    row = [1]
    for size in range(2, m + 1):
        row = [(k + 1) * (row[k] if k < len(row) else 0) + (size - k) * (row[k - 1] if k >= 1 else 0) for k in range(size)]
    total, above = math.factorial(m), 0
    for t in range(m - 1, -1, -1):
        if (above + row[t]) / total >= tail:
            return t
        above += row[t]
    return 0


def test_buckets_come_in_random_order(data):
    """Consecutive batches are neither mostly ascending nor mostly descending in length."""
    lengths = uniform_lengths(4096, seed=13)
    batches, what = call_buckets(data, lengths, 16, torch.Generator().manual_seed(17))
    longest = [max(int(lengths[i]) for i in b) for b in batches]
    ups = sum(b > a for a, b in zip(longest, longest[1:]))
    downs = sum(b < a for a, b in zip(longest, longest[1:]))
    limit = ascent_limit(len(longest))
    if ups > limit or downs > limit:
        raise checks.Wrong(
            f"{what}: of {len(longest) - 1} consecutive pairs of batches, {ups} go up in length and {downs} down; in a "
            f"random order each stays below {limit + 1} (false alarm below 1e-6): shuffle the order of the batches "
            "(with the generator) after building them"
        )


def test_buckets_change_between_epochs(data):
    """Two successive calls (epochs) share at most half of their batches (distinct lengths)."""
    lengths = distinct_lengths(4096, seed=19)
    g = torch.Generator().manual_seed(23)
    first, what = call_buckets(data, lengths, 16, g)
    second, _ = call_buckets(data, lengths, 16, g)
    again = {frozenset(b) for b in first} & {frozenset(b) for b in second}
    if len(again) > len(second) / 2:
        raise checks.Wrong(
            f"two calls of {what} with the same generator returned {len(again)} of their {len(second)} batches again: "
            "every sequence is batched with the same neighbours each epoch. Sort within random pools of "
            "50 * batch_size indices, not the whole dataset"
        )


# ---------------------------------------------------------------- make_loader

DATASET_SIZE, BATCH = 22, 4  # six batches, the last of 2


class NoisyDataset(Dataset):
    """Sample i is float64 [i, a draw from torch's global generator, from random, from
    numpy.random]: an augmentation's randomness, made visible."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, torch.Tensor):
            i = int(i)
        return torch.tensor([float(i), torch.rand((), dtype=torch.float64).item(), random.random(), float(np.random.random())], dtype=torch.float64)


class VarLenDataset(Dataset):
    """Sample i: i % 3 + 1 copies of i (sequences torch's default collate cannot stack)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i):
        return torch.full((int(i) % 3 + 1,), int(i), dtype=torch.int64)


class FirstTokens:
    """A collate_fn of the grader's: the first token of each sample, and a marker."""

    def __call__(self, samples):
        return {"collated_by": "FirstTokens", "first": torch.stack([s[0] for s in samples])}


def _set_global_rngs(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _rng_states() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "random": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_pos": int(pos),
    }


def set_global_rngs(near, seed: int) -> None:
    """Seed torch's global generator, random and numpy.random in the executor where `near` lives."""
    checks.run_in(near, _set_global_rngs, seed)


def rng_states(near) -> dict:
    """The global random states (torch CPU, random, numpy) of the executor where `near` lives."""
    return rules.call(_with_near, near, _rng_states)


def _with_near(_near, fn):
    return fn()


def expect_same_rng_states(before, after, *, what):
    changed = [name for name in ("torch", "random", "numpy") if not torch.equal(before[name], after[name])]
    if before["numpy_pos"] != after["numpy_pos"] and "numpy" not in changed:
        changed.append("numpy")
    if changed:
        raise checks.Wrong(
            f"{what} changed the caller's global random state ({', '.join(changed)}): draw from your own "
            "generator, and restore any global state you seed"
        )


def epochs(loader, n: int) -> list:
    """Run in the executor: n passes over the loader, each a list of its batches."""
    return [[batch for batch in loader] for _ in range(n)]


def make(data, dataset, *, seed, num_workers, **kwargs):
    extra = "".join(f", {k}={checks.type_name(v)}()" for k, v in kwargs.items())
    what = f"make_loader({checks.type_name(dataset)}(), {BATCH}, seed={seed}, num_workers={num_workers}{extra})"
    loader = rules.call(data.make_loader, dataset, BATCH, seed=seed, num_workers=num_workers, what=what, **kwargs)
    return loader, what


class RowsCollate:
    """The collate_fn of the loader checks: each sample's values as a tuple of floats.

    Plain data, not tensors, comes back from the workers: a tensor crosses from a worker
    by passing its shared-memory file descriptor over a Unix socket that multiprocessing
    binds under TMPDIR, and a class grader's scratch TMPDIR can be longer than AF_UNIX's
    108 bytes ("AF_UNIX path too long" in the worker's queue thread, after which the
    loader waits for that batch forever). torch's default collate is checked with
    num_workers=0 (test_loader_epoch_holds_every_sample_once)."""

    def __call__(self, samples):
        return [tuple(float(v) for v in s.tolist()) for s in samples]


def run_loader(data, *, seed=0, num_workers=0, n_epochs=2, global_seed=None, default_collate=False):
    """The batches of n_epochs epochs of a fresh loader over a NoisyDataset, from a given
    global random state: each epoch a list of batches, each batch a list of
    (index, torch draw, random draw, numpy draw) rows."""
    dataset, collate = checks.place(data, NoisyDataset(DATASET_SIZE), RowsCollate())
    if global_seed is not None:
        set_global_rngs(data, global_seed)
    kwargs = {} if default_collate else {"collate_fn": collate}
    loader, what = make(data, dataset, seed=seed, num_workers=num_workers, **kwargs)
    got = rules.call(epochs, loader, n_epochs, what=f"iterating over {what}")
    if default_collate:
        if not isinstance(got, list) or not all(isinstance(e, list) and all(isinstance(b, torch.Tensor) and b.dim() == 2 for b in e) for e in got):
            raise checks.Wrong(f"iterating over {what} gave {describe(got)[:200]}; expected batches as (B, 4) float64 tensors (torch's default collate)")
        return [[[tuple(row) for row in b.tolist()] for b in e] for e in got], what
    if not isinstance(got, list) or not all(isinstance(e, list) and all(isinstance(b, list) for b in e) for e in got):
        raise checks.Wrong(f"iterating over {what} gave {describe(got)[:200]}; expected the batches collate_fn returns (lists of rows)")
    return [[[tuple(row) for row in b] for b in e] for e in got], what


def same_batches(a, b) -> bool:
    return a == b


def order_of(epoch) -> list[int]:
    return [int(row[0]) for b in epoch for row in b]


def draws_of(epoch) -> dict[int, tuple]:
    return {int(row[0]): tuple(row[1:]) for b in epoch for row in b}


def where_they_differ(a, b) -> str:
    cols = ["index", "torch", "random", "numpy"]
    for e, (ea, eb) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(ea, eb)):
            if x != y:
                diff = [cols[c] for c in range(4) if len(x) == len(y) and any(r[c] != q[c] for r, q in zip(x, y))]
                return f"epoch {e + 1}, batch {i}: {', '.join(diff) or 'sizes'} differ (got {x} and {y})"
    return "different numbers of batches"


def test_loader_is_a_dataloader(data):
    """make_loader returns a torch DataLoader with one batch per batch_size samples (the last kept), and the workers asked for."""
    (dataset,) = checks.place(data, NoisyDataset(DATASET_SIZE))
    loader, what = make(data, dataset, seed=0, num_workers=2)
    if not checks.is_instance(loader, DataLoader):
        raise checks.Wrong(f"{what} returned {checks.type_name(loader)}; expected a torch.utils.data.DataLoader")
    n_batches = rules.call(len, loader, what=f"len({what})")
    if n_batches != math.ceil(DATASET_SIZE / BATCH):
        raise checks.Wrong(f"len({what}) is {n_batches}; expected {math.ceil(DATASET_SIZE / BATCH)} batches (the last one short)")
    if loader.num_workers != 2:
        raise checks.Wrong(f"{what} has num_workers={loader.num_workers}; expected 2, as asked")


def test_loader_epoch_holds_every_sample_once(data):
    """One epoch: every sample once, in batches of batch_size (the last smaller), shuffled."""
    (epoch,), what = run_loader(data, n_epochs=1, default_collate=True)
    sizes = [len(b) for b in epoch]
    want = [BATCH] * (DATASET_SIZE // BATCH) + [DATASET_SIZE % BATCH]
    order = order_of(epoch)
    if sizes != want or sorted(order) != list(range(DATASET_SIZE)):
        raise checks.Wrong(f"an epoch of {what} held batches of sizes {sizes} with samples {order}; expected sizes {want}, every sample 0..{DATASET_SIZE - 1} once")
    if order == list(range(DATASET_SIZE)):
        raise checks.Wrong(f"an epoch of {what} gave the samples in the dataset's order {order}; expected a shuffle")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_same_seed_same_batches(data, num_workers):
    """Two loaders with the same seed give the same batches (random draws included), whatever the global random state."""
    n_epochs = 2 if num_workers == 0 else 1
    first, what = run_loader(data, num_workers=num_workers, n_epochs=n_epochs, global_seed=1)
    second, _ = run_loader(data, num_workers=num_workers, n_epochs=n_epochs, global_seed=2)
    if not all(same_batches(a, b) for a, b in zip(first, second)):
        raise checks.Wrong(
            f"two loaders {what}, made after seeding the global random states (torch, random, numpy) differently, gave "
            f"different batches: {where_they_differ(first, second)}. Everything random must come from `seed`"
        )


def test_loader_identical_for_0_and_2_workers(data):
    """num_workers=0 and num_workers=2 give the same batches over two epochs, random draws included."""
    alone, what = run_loader(data, num_workers=0, global_seed=1)
    workers, _ = run_loader(data, num_workers=2, global_seed=1)
    if not all(same_batches(a, b) for a, b in zip(alone, workers)):
        raise checks.Wrong(
            f"{what} and the same loader with num_workers=2 gave different batches: {where_they_differ(alone, workers)}. "
            "A sample's random numbers must not depend on which process makes it: seed each sample, not each worker"
        )


def test_loader_epochs_shuffle_differently(data):
    """The second epoch of a loader is a different shuffle from the first."""
    (first, second), what = run_loader(data)
    if order_of(first) == order_of(second):
        raise checks.Wrong(f"two epochs of {what} gave the same order {order_of(first)}: the shuffle must change every epoch")


def test_loader_epochs_draw_different_numbers(data):
    """A sample draws other random numbers in the second epoch than in the first (a new augmentation)."""
    (first, second), what = run_loader(data)
    a, b = draws_of(first), draws_of(second)
    same = [i for i in a if i in b and any(x == y for x, y in zip(a[i], b[i]))]
    if same:
        raise checks.Wrong(
            f"in two epochs of {what}, samples {same[:6]} drew the same random numbers both times "
            f"(sample {same[0]}: {a[same[0]]} and {b[same[0]]}): their seeds must change with the epoch"
        )


def test_loader_seeds_differ(data):
    """Different seeds give different shuffles."""
    (zero,), what = run_loader(data, seed=0, n_epochs=1)
    (one,), _ = run_loader(data, seed=1, n_epochs=1)
    if order_of(zero) == order_of(one):
        raise checks.Wrong(f"{what} and seed=1 gave the same order {order_of(zero)}")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_samples_draw_different_numbers(data, num_workers):
    """Within one epoch no two samples draw the same random numbers (from torch, random or numpy)."""
    (epoch,), what = run_loader(data, num_workers=num_workers, n_epochs=1)
    draws = draws_of(epoch)
    for col, name in enumerate(("torch", "random", "numpy")):
        values = [d[col] for d in draws.values()]
        if len(set(values)) < len(values):
            twins = [i for i, d in draws.items() if values.count(d[col]) > 1]
            raise checks.Wrong(
                f"in one epoch of {what}, samples {twins[:6]} drew the same number from {name} "
                f"({draws[twins[0]][col]!r}): every sample needs a seed of its own"
            )


def test_making_loader_leaves_global_rng_alone(data):
    """make_loader itself neither draws from nor reseeds the global random states."""
    (dataset,) = checks.place(data, NoisyDataset(DATASET_SIZE))
    set_global_rngs(data, 9)
    before = rng_states(data)
    _, what = make(data, dataset, seed=0, num_workers=0)
    expect_same_rng_states(before, rng_states(data), what=what)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_leaves_global_rng_alone(data, num_workers):
    """Making the loader and iterating over it leave the global random states (torch, random, numpy) as they were."""
    dataset, collate = checks.place(data, NoisyDataset(DATASET_SIZE), RowsCollate())
    set_global_rngs(data, 9)
    before = rng_states(data)
    loader, what = make(data, dataset, seed=0, num_workers=num_workers, collate_fn=collate)
    rules.call(epochs, loader, 1, what=f"iterating over {what}")
    expect_same_rng_states(before, rng_states(data), what=f"making and iterating over {what}")


def test_loader_uses_collate_fn(data):
    """collate_fn, when given, makes the batches (variable-length samples)."""
    dataset, collate = checks.place(data, VarLenDataset(), FirstTokens())
    loader, what = make(data, dataset, seed=0, num_workers=0, collate_fn=collate)
    (epoch,) = rules.call(epochs, loader, 1, what=f"iterating over {what}")
    if not all(isinstance(b, dict) and b.get("collated_by") == "FirstTokens" for b in epoch):
        raise checks.Wrong(f"iterating over {what} gave {describe(epoch)[:200]}; expected the batches collate_fn returns (dicts)")
    firsts = sorted(int(i) for b in epoch for i in b["first"].tolist())
    if firsts != list(range(10)):
        raise checks.Wrong(f"iterating over {what} gave samples {firsts}; expected each of 0..9 once")
