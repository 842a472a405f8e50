"""Data: a padding collate, length bucketing and a reproducible DataLoader.

Text batches hold sequences of different lengths. You write the three pieces that turn a
dataset of token-id sequences into training batches: a collate function that pads a list
of sequences into one (B, T_max) tensor with its attention mask and lengths; a bucketing
batch sampler that groups sequences of similar length, so that little of each batch is
padding, while still shuffling every epoch; and a DataLoader whose every batch, random
draws of the dataset included, depends only on the seed and the epoch: the same on every
run, and the same with 0 or 2 worker processes. The grader compares the collate with a
padding it builds itself, measures the buckets' padding against random batching, and
runs your loader twice, with and without workers, from different global random states.

Run the grader:   make check topic=data
Hints:            exercises/data/README.md
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
        raise NotImplementedError("data.PadCollate.__init__")

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
        raise NotImplementedError("data.PadCollate.__call__")


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
    raise NotImplementedError("data.length_buckets")


class SeededSamples(Dataset):
    """`dataset`, with every sample drawn under its own seed: SeededSamples(ds)[(i, s)] is
    ds[i], made with torch's CPU generator, `random` and `numpy.random` seeded from s.

    Whatever random numbers ds.__getitem__ draws (a random crop, token dropout) then depend
    on s alone: not on the process that makes the sample, nor on what that process drew
    before. The RNG states of the process are restored afterwards, so with num_workers=0
    the caller's own randomness (dropout, initialisation) is not disturbed.
    """

    def __init__(self, dataset: Dataset):
        raise NotImplementedError("data.SeededSamples.__init__")

    def __len__(self) -> int:
        raise NotImplementedError("data.SeededSamples.__len__")

    def __getitem__(self, key: tuple[int, int]):
        """key: (index, seed), seed an int in [0, 2**63)."""
        raise NotImplementedError("data.SeededSamples.__getitem__")


class SeededBatches(Sampler):
    """A DataLoader batch_sampler: each epoch (each iteration) a new shuffle of range(n),
    cut into batches of batch_size (the last may be smaller), every index paired with a
    seed of its own: batches of (index, seed) keys for SeededSamples. Indices and seeds
    are drawn from `generator` alone, in the main process, so they do not depend on the
    number of workers; the generator advances, so every epoch differs.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        raise NotImplementedError("data.SeededBatches.__init__")

    def __len__(self) -> int:
        raise NotImplementedError("data.SeededBatches.__len__")

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        raise NotImplementedError("data.SeededBatches.__iter__")


def make_loader(
    dataset: Dataset, batch_size: int, *, seed: int, num_workers: int, collate_fn: Callable | None = None
) -> DataLoader:
    """A shuffling DataLoader whose batches depend only on `seed` and the epoch.

    Args:
        dataset: a map-style dataset (len and integer indexing) on the CPU. Its
            __getitem__ may draw random numbers from torch's global generator, `random`
            or `numpy.random` (augmentation).
        batch_size: samples per batch; the last batch of an epoch may be smaller (nothing
            is dropped).
        seed: an int; the only source of the loader's randomness.
        num_workers: 0 (load in this process) or more worker processes.
        collate_fn: turns a list of samples into a batch (PadCollate, say); None means
            torch's default collate.

    Returns:
        A torch.utils.data.DataLoader, with len() the number of batches per epoch. Each
        iteration over it is one epoch: a new shuffle in which every sample appears once.
        - The same seed gives the same batches, epoch after epoch, on every run: the same
          samples in the same order, and the same random numbers drawn by the dataset,
          whatever the global random state before (torch, random, numpy).
        - The batches are identical for num_workers=0 and num_workers=2 (and any other
          number), random draws included: a sample's random numbers depend on the seed
          and its place in the epoch, never on which process made it.
        - Successive epochs differ (order and random draws), different seeds differ, and
          no two samples of an epoch draw the same random numbers.
        - Making the loader and iterating over it leave the caller's global random states
          (torch's CPU generator, random, numpy.random) as they were.
        Neither pin_memory nor persistent_workers.
    """
    raise NotImplementedError("data.make_loader")
