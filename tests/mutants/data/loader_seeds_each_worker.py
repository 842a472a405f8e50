"""Mistake: make_loader follows the per-worker recipe (a seeded generator= and a worker_init_fn seeding numpy and random from torch.initial_seed()): reproducible with workers, but a sample's draws depend on which process makes it, so with num_workers=0 they come from the caller's global state, and differ from num_workers=2.

caught-by: test_loader_same_seed_same_batches, test_loader_identical_for_0_and_2_workers, test_loader_leaves_global_rng_alone
hint: 5
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class PadCollate:
    """A DataLoader collate_fn that pads token-id sequences on the right.

    `PadCollate(pad_id)(samples)` turns a list of B 1-d integer tensors (token ids, of
    lengths L_0 .. L_{B-1}, each >= 0) into one batch, padded to T_max = max(L_i), the
    longest sequence of *this* batch (dynamic padding, not a fixed length).

    Rules: torch.nn.utils.rnn.pad_sequence and nested tensors (to_padded_tensor) are
    forbidden (caught at the aten level): build the padding yourself. The samples are not
    modified.
    """

    def __init__(self, pad_id: int):
        """Args:
        pad_id: the token id written into padding positions. It may also be a real token
            id (many tokenizers pad with their end-of-text token): padding is marked by the
            mask, never recognised by its id.
        """
        self.pad_id = int(pad_id)

    def __call__(self, samples: Sequence[Tensor]) -> dict[str, Tensor]:
        """Pad one batch.

        Args:
            samples: a non-empty list of B 1-d integer tensors (int64 or int32, possibly
                non-contiguous views), all on one device. A sample may be empty (length 0).

        Returns:
            A dict with exactly these keys, all on the samples' device:
            - "input_ids": (B, T_max) int64; row i holds sample i in positions 0..L_i - 1
              (right padding) and pad_id after it.
            - "attention_mask": (B, T_max) bool, True at the L_i real positions of row i,
              False at padding (also where a real token equals pad_id).
            - "lengths": (B,) int64, L_i.
            With every sample empty, T_max is 0: shapes (B, 0) and (B,).
        """
        device = samples[0].device
        lengths = torch.tensor([len(s) for s in samples], dtype=torch.int64, device=device)  # (B,)
        t_max = int(lengths.max()) if len(samples) else 0
        # The mask comes from the lengths, never from ids == pad_id: pad_id may be a real
        # token, and such a token must stay visible to attention and to the loss.
        mask = torch.arange(t_max, device=device) < lengths[:, None]  # (B, T_max)
        ids = torch.full((len(samples), t_max), self.pad_id, dtype=torch.int64, device=device)  # (B, T_max)
        # Boolean indexing walks the mask row by row, left to right: the concatenated
        # samples land in each row's first L_i positions, right padding in one copy.
        ids[mask] = torch.cat([s.reshape(-1) for s in samples]).to(torch.int64)  # (sum L_i,)
        return {"input_ids": ids, "attention_mask": mask, "lengths": lengths}


def length_buckets(lengths: Sequence[int] | Tensor, batch_size: int, *, generator: torch.Generator) -> list[list[int]]:
    """Batches of indices whose sequences have similar lengths, in a random order.

    For one epoch: pass the result to DataLoader(dataset, batch_sampler=...), or call it
    again (with the same generator, which it advances) for the next epoch.

    Args:
        lengths: the N sequence lengths: a sequence of ints or a 1-d integer tensor (CPU).
        batch_size: indices per batch, >= 1.
        generator: a CPU torch.Generator, the only source of randomness: the same state
            gives the same batches (torch's global generator and `random` are neither used
            nor advanced). The call advances it, so the next call gives other batches.

    Returns:
        A list of batches, each a list of Python int indices into `lengths`, such that:
        - every index 0..N-1 is in exactly one batch (N = 0 gives []);
        - every batch holds batch_size indices, except at most one, which holds fewer
          (the remainder: nothing is dropped);
        - batches group similar lengths: their total padding (over batches, len(batch) *
          the longest length in it, minus the sum of its lengths) is at most a quarter of
          random batching's expected padding (the grader measures it on 4096 lengths
          spread over 1..512, uniform and long-tailed, batch_size 16 and 32);
        - the batches come in a random order, not sorted by length (nor reverse-sorted);
        - the batches themselves change from call to call: sequences are not batched
          with the same neighbours every epoch (at most half of a call's batches may
          appear again in the next call, on distinct lengths).

    The way to get all of this: shuffle the indices, cut them into pools of
    50 * batch_size, sort each pool by length, cut each pool into batches, and shuffle the
    order of the batches.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.int64).reshape(-1)  # (N,)
    n = lengths.numel()
    # A pool is a multiple of batch_size, so only the last pool can end in a short batch.
    pool = 50 * batch_size
    order = torch.randperm(n, generator=generator)  # (N,): which sequences share a pool
    batches: list[list[int]] = []
    for start in range(0, n, pool):
        members = order[start : start + pool]  # (<= pool,)
        # Sorting inside a pool only: neighbours change every epoch (a full sort would
        # batch each sequence with the same neighbours forever). Stable, so ties keep
        # their shuffled order.
        members = members[torch.argsort(lengths[members], stable=True)]
        batches += [members[i : i + batch_size].tolist() for i in range(0, len(members), batch_size)]
    # Without this, each pool's batches would come shortest first: the model would see
    # lengths in a sawtooth instead of a random order.
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


class SeededSamples(Dataset):
    """`dataset`, with every sample drawn under its own seed: SeededSamples(ds)[(i, s)] is
    ds[i], made with torch's CPU generator, `random` and `numpy.random` seeded from s.

    Whatever random numbers ds.__getitem__ draws (a random crop, token dropout) then depend
    on s alone: not on the process that makes the sample, nor on what that process drew
    before. The RNG states of the process are restored afterwards, so with num_workers=0
    the caller's own randomness (dropout, initialisation) is not disturbed.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        """key: (index, seed), seed an int in [0, 2**63)."""
        index, seed = key
        torch_state, random_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            torch.default_generator.manual_seed(seed)  # the CPU generator only: leave any GPU's alone
            random.seed(seed)
            np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # numpy takes 32-bit words
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(random_state)
            np.random.set_state(numpy_state)


class SeededBatches(Sampler):
    """A DataLoader batch_sampler: each epoch (each iteration) a new shuffle of range(n),
    cut into batches of batch_size (the last may be smaller), every index paired with a
    seed of its own: batches of (index, seed) keys for SeededSamples. Indices and seeds
    are drawn from `generator` alone, in the main process, so they do not depend on the
    number of workers; the generator advances, so every epoch differs.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        # One seed per sample, not per worker: which worker makes a sample depends on
        # num_workers, the sample's seed must not.
        seeds = torch.randint(0, 2**63 - 1, (self.n,), generator=self.generator).tolist()
        for start in range(0, self.n, self.batch_size):
            yield list(zip(order[start : start + self.batch_size], seeds[start : start + self.batch_size]))


def seed_worker(worker_id: int) -> None:
    # Seeds this worker's numpy and random from the seed torch gave the worker.
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(dataset, batch_size, *, seed, num_workers, collate_fn=None):
    """A shuffling DataLoader seeded the per-worker way."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=generator,
        worker_init_fn=seed_worker,  # MISTAKE: seeds each worker, not each sample
    )
