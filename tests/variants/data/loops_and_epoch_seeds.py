"""Variant: PadCollate pads each sample with F.pad and stacks the rows; length_buckets
shuffles by sorting random keys and sorts each pool with Python's sorted(); make_loader
draws one seed per epoch and seeds sample k of the epoch with epoch_seed + k, under
torch.random.fork_rng, with a generator-style batch sampler of its own.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler


class PadCollate:
    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, samples):
        lengths = [int(s.shape[0]) for s in samples]
        t_max = max(lengths)
        rows = [F.pad(s.long(), (0, t_max - n), value=self.pad_id) for s, n in zip(samples, lengths)]
        ids = torch.stack(rows)  # (B, T_max)
        device = samples[0].device
        lengths_t = torch.tensor(lengths, device=device)
        mask = torch.arange(t_max, device=device).expand(len(samples), t_max) < lengths_t.unsqueeze(1)
        return {"input_ids": ids, "attention_mask": mask, "lengths": lengths_t}


def length_buckets(lengths, batch_size, *, generator):
    lengths = [int(x) for x in lengths]
    n = len(lengths)
    keys = torch.rand(n, generator=generator, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: float(keys[i]))
    pool = 50 * batch_size
    batches = []
    for start in range(0, n, pool):
        members = sorted(order[start : start + pool], key=lambda i: lengths[i])
        for i in range(0, len(members), batch_size):
            batches.append(members[i : i + batch_size])
    batch_keys = torch.rand(len(batches), generator=generator, dtype=torch.float64).tolist()
    return [b for _, b in sorted(zip(batch_keys, batches), key=lambda kb: kb[0])]


class SeededSamples(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededBatches(Sampler):
    def __init__(self, n, batch_size, generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        epoch_seed = int(torch.randint(0, 2**31, (), generator=self.generator))
        order = torch.randperm(self.n, generator=self.generator).tolist()
        batch = []
        for k, index in enumerate(order):
            batch.append((index, epoch_seed * 1000003 + k))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def make_loader(dataset, batch_size, *, seed, num_workers, collate_fn=None):
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = SeededBatches(len(dataset), batch_size, generator)
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn, generator=generator)
