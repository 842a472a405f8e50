"""Variant: targets by torch.where, the loss by log_softmax and gather with an explicit token
count, float64 tensor sums for perplexity, packing by Python lists, and the mask from position
comparisons.

Language-model training: shifted targets, the token-mean loss, perplexity and packing.

A causal language model learns to predict token t + 1 from tokens 0..t. You write the
pieces every training and evaluation loop of such a model needs: the shifted (inputs,
targets) pair with padding ignored, the loss averaged over every real target token of the
batch, perplexity over a whole evaluation set (in eval mode, without autograd, pooled over
tokens, not batches), and sequence packing with a document mask so that packed documents
cannot attend to each other. The grader compares everything with torch (F.cross_entropy,
float64), on batches whose sequences and batches hold different numbers of real tokens,
where the wrong averages differ.

Run the grader:   make check topic=lm_training
Hints:            exercises/lm_training/README.md
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def next_token_batch(ids: Tensor, attention_mask: Tensor, *, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    real = attention_mask[:, 1:].bool()
    return ids[:, :-1].clone(), torch.where(real, ids[:, 1:], torch.full_like(ids[:, 1:], ignore_index))


def lm_loss(logits: Tensor, targets: Tensor, *, ignore_index: int = -100) -> Tensor:
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    real = targets != ignore_index
    picked = logp.gather(-1, targets.clamp(min=0).masked_fill(~real, 0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -(picked * real).sum() / real.sum()


def evaluate_perplexity(model, batches) -> float:
    mode = model.training
    model.train(False)
    nll = torch.zeros((), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.int64)
    with torch.inference_mode():
        for ids, mask in batches:
            x, y = next_token_batch(ids, mask)
            logp = torch.log_softmax(model(x).double(), dim=-1)
            real = y != -100
            nll -= logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)[real].sum().cpu()
            tokens += real.sum().cpu()
    model.train(mode)
    return float(torch.exp(nll / tokens))


def pack_sequences(docs: list[Tensor], block_size: int, eos_id: int) -> tuple[Tensor, Tensor]:
    tokens, owners = [], []
    for i, doc in enumerate(docs):
        tokens += doc.tolist() + [eos_id]
        owners += [i] * (len(doc) + 1)
    n = len(tokens) // block_size
    dev = docs[0].device
    return (torch.tensor(tokens[: n * block_size], dtype=torch.int64, device=dev).reshape(n, block_size),
            torch.tensor(owners[: n * block_size], dtype=torch.int64, device=dev).reshape(n, block_size))


def document_causal_mask(doc_ids: Tensor) -> Tensor:
    pos = torch.arange(doc_ids.shape[1], device=doc_ids.device)
    return (pos[None, :, None] >= pos[None, None, :]) & (doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1))
