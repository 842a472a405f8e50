"""Variant: Linear draws its bias first (torch.rand scaled to the bound) and its weight with
nn.init.kaiming_uniform_(a=sqrt(5)), and computes the rows with torch.addmm on a flattened
view; MLP appends to its ModuleLists in a loop and indexes them; RunningMean keeps the mean
through the running sum (mean * count + sum) / (count + N); count_parameters collects the
distinct parameters by id.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        if bias:
            self.bias = nn.Parameter(torch.rand(out_features) * (2 * bound) - bound)
        else:
            self.register_parameter("bias", None)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.bias is None:
            out = rows @ self.weight.t()
        else:
            out = torch.addmm(self.bias, rows, self.weight.t())
        return out.reshape(*x.shape[:-1], self.out_features)


class MLP(nn.Module):
    def __init__(self, sizes, activation=nn.ReLU) -> None:
        super().__init__()
        if len(sizes) <= 1:
            raise ValueError("MLP needs an input and an output size")
        self.layers = nn.ModuleList()
        self.activations = nn.ModuleList()
        for i in range(len(sizes) - 1):
            self.layers.append(Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                self.activations.append(activation())

    def forward(self, x: Tensor) -> Tensor:
        for i in range(len(self.layers)):
            x = self.layers[i](x)
            if i < len(self.activations):
                x = self.activations[i](x)
        return x


class RunningMean(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim), persistent=True)
        self.register_buffer("count", torch.tensor(0))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                flat = x.reshape(-1, x.shape[-1])
                total = self.count + flat.shape[0]
                self.mean.copy_((self.mean * self.count + flat.sum(0)) / total)
                self.count += flat.shape[0]
        return x - self.mean


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    seen = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        if p.requires_grad or not trainable_only:
            seen[id(p)] = p.numel()
    return int(sum(seen.values()))
