"""Language-model training: shifted targets, the token-mean loss, perplexity and packing.

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
    """The (inputs, targets) pair of next-token prediction.

    Args:
        ids: (B, T) int64 token ids, T >= 2, right-padded: each row's real tokens come
            first, then padding (whatever id the padding has).
        attention_mask: (B, T), 1 (or True) at real tokens and 0 (False) at padding; int64
            or bool.
        ignore_index: the target value of positions that must not be learned.

    Returns:
        (inputs, targets), both (B, T - 1) int64 on ids' device:
        - inputs = ids[:, :-1];
        - targets = ids[:, 1:], except ignore_index wherever the target position is
          padding (attention_mask[:, 1:] is 0).
        ids and attention_mask are not modified (no in-place writes into their views).
    """
    # BEGIN SOLUTION
    inputs = ids[:, :-1]  # (B, T-1): position t predicts ...
    targets = ids[:, 1:]  # (B, T-1): ... the token at t + 1
    # The mask is shifted with the targets: what matters is whether the *target* is real.
    # masked_fill (not masked_fill_) returns a new tensor: ids[:, 1:] is a view of ids.
    targets = targets.masked_fill(attention_mask[:, 1:] == 0, ignore_index)
    return inputs, targets
    # END SOLUTION


def lm_loss(logits: Tensor, targets: Tensor, *, ignore_index: int = -100) -> Tensor:
    """The mean cross-entropy over every real target token of the batch.

    Every token counts the same: the sum of the token losses divided by the number of
    targets that are not ignore_index, over the whole batch (not a mean of per-sequence
    means, which weighs the tokens of short sequences more).

    Args:
        logits: (B, T, V) floating point (any float dtype; possibly non-contiguous).
        targets: (B, T) int64, class ids in [0, V) or ignore_index. At least one target
            is not ignore_index.
        ignore_index: the target value to leave out.

    Returns:
        A 0-dim tensor on logits' device, computed in float32 when logits are bfloat16 or
        float16 (the log-sum-exp of half-precision logits loses too much), in float32 for
        float32 and float64 for float64: dtype torch.promote_types(logits.dtype,
        torch.float32). Differentiable with respect to logits. F.cross_entropy is allowed.
    """
    # BEGIN SOLUTION
    vocab = logits.shape[-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    # reshape, not view: logits may be non-contiguous. cross_entropy's default reduction
    # with ignore_index is already the mean over the non-ignored targets of the batch.
    return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=ignore_index)  # (B*T, V), (B*T,)
    # END SOLUTION


def evaluate_perplexity(model: nn.Module | Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Perplexity of a language model over a whole evaluation set.

    For each (ids, attention_mask) in batches (next_token_batch's arguments), the model is
    run on the inputs and scored on the real targets; the negative log-likelihood and the
    number of real target tokens are summed over all batches, and the result is
    exp(total NLL / total count): the perplexity of the pooled tokens, not a mean of
    per-batch perplexities or losses (batches hold different numbers of real tokens).

    Args:
        model: an nn.Module mapping ids (B, T - 1) int64 to logits (B, T - 1, V).
        batches: an iterable of (ids (B, T), attention_mask (B, T)) pairs, as
            next_token_batch takes them; possibly a one-pass iterator (a generator): read
            it once. B and T may differ between batches. At least one real target.

    Returns:
        A Python float. The model runs in eval mode (dropout off) and without autograd
        (torch.no_grad), once per batch; afterwards its previous mode (train or eval) is
        restored, even if nothing else changed. The sums are accumulated in float64 (or
        Python floats).
    """
    # BEGIN SOLUTION
    was_training = model.training
    model.eval()  # dropout off: evaluation must be deterministic
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():  # no graph: evaluation needs no gradients, and saves the memory
            for ids, attention_mask in batches:
                inputs, targets = next_token_batch(ids, attention_mask)
                logits = model(inputs)  # (B, T-1, V)
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                # reduction="sum": per-token NLLs pooled across batches, divided once at the end.
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
                total_nll += nll.item()
                total_tokens += int((targets != -100).sum())
    finally:
        model.train(was_training)  # restore whichever mode the caller had
    return math.exp(total_nll / total_tokens)
    # END SOLUTION


def pack_sequences(docs: list[Tensor], block_size: int, eos_id: int) -> tuple[Tensor, Tensor]:
    """Pack documents into fixed-size training blocks.

    Appends eos_id to every document, concatenates them in order into one stream, and cuts
    the stream into blocks of block_size tokens, dropping the incomplete tail.

    Args:
        docs: a non-empty list of D 1-D int64 tensors (documents, each possibly empty or longer than
            a block), all on one device.
        block_size: tokens per block, >= 1.
        eos_id: the end-of-document token id.

    Returns:
        (blocks, doc_ids), both (N, block_size) int64 on the docs' device, with
        N = (sum of len(doc) + 1) // block_size (possibly 0):
        - blocks: the stream's first N * block_size tokens, block after block;
        - doc_ids: for each position, the index in docs of the document the token came
          from; a document's eos belongs to that document.
        docs are not modified.
    """
    # BEGIN SOLUTION
    device = docs[0].device
    eos = torch.tensor([eos_id], dtype=torch.int64, device=device)
    stream = torch.cat([t for doc in docs for t in (doc.to(torch.int64), eos)])  # (L,), every doc then its eos
    lengths = torch.tensor([len(doc) + 1 for doc in docs], device=device)  # (D,) tokens per doc, eos included
    owner = torch.repeat_interleave(torch.arange(len(docs), device=device), lengths)  # (L,)
    n = stream.numel() // block_size  # whole blocks only: the tail is dropped
    keep = n * block_size
    return stream[:keep].view(n, block_size), owner[:keep].view(n, block_size)  # (N, block_size) each
    # END SOLUTION


def document_causal_mask(doc_ids: Tensor) -> Tensor:
    """The attention mask of packed blocks: causal, and within one document.

    Args:
        doc_ids: (N, T) integer, the document of each position (pack_sequences' doc_ids).

    Returns:
        (N, T, T) bool on doc_ids' device: [n, i, j] is True where query i may attend
        key j, that is j <= i and doc_ids[n, j] == doc_ids[n, i]. No Python loop over
        blocks or positions.
    """
    # BEGIN SOLUTION
    T = doc_ids.shape[-1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (N, T, T): [n, i, j] query i, key j
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T): j <= i
    return same_doc & causal
    # END SOLUTION
