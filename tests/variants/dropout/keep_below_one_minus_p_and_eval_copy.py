"""Variant: a learner's file written another way. The mask keeps u < 1 - p (probability
1 - p for u uniform in [0, 1)), drawn with torch.empty(...).uniform_(generator=...); eval
returns a copy of x rather than x itself; p = 1 is handled as x * 0 (zeros that keep a
gradient); the module delegates through a stored functional call and checks p with a
helper."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check(p: float) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    _check(p)
    if not training:
        return x.clone()
    if p == 1.0:
        return x * 0.0
    u = torch.empty(x.shape, device=x.device, dtype=torch.float32).uniform_(generator=generator)
    mask = (u < 1.0 - p).to(x.dtype)
    return x * mask / (1.0 - p)


class Dropout(nn.Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        _check(p)
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, p=self.p, training=self.training, generator=None)
