"""Sampling from a language model's logits: temperature, top-k, top-p and repetition penalty.

You turn one step's logits into the next tokens the way `generate` in Hugging Face
transformers or nanoGPT's sampling loop does: scale by a temperature, keep only the k most
likely tokens or the nucleus of probability p, penalise tokens already generated, and draw
from what is left with a caller's random generator. The grader compares every filter with
torch's own ops in float64, tests the distribution of your draws with a chi-square test,
checks reproducibility, counts aten ops to catch Python loops, and times your top_k_filter
against the reference on (256, 32000) logits.

Every function works on logits of shape (..., V): any number of leading dimensions
(batch, time), the vocabulary last. None modifies its inputs or loops over rows or
tokens in Python (the aten ops are counted twice per size, so every call on the same
input must do the same work).

Run the grader:   make check topic=sampling
Hints:            exercises/sampling/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Scale logits by 1 / temperature.

    Args:
        logits: (..., V) floating tensor.
        temperature: > 0. Below 1 sharpens the distribution, above 1 flattens it.

    Returns:
        logits / temperature: same shape, dtype and device as `logits`.

    Raises:
        ValueError: if temperature <= 0 (greedy decoding is `sample`'s job).
    """
    raise NotImplementedError("sampling.apply_temperature")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of every row; set the others to -inf.

    Ties: every logit equal to the k-th largest value of its row is kept as well, so a
    row may keep more than k tokens when the k-th value is tied (the rule
    `logits >= kth_value`, as in Hugging Face's TopKLogitsWarper).

    Args:
        logits: (..., V) floating tensor; it may already hold -inf.
        k: >= 1. k >= V keeps every logit.

    Returns:
        (..., V) in the same dtype, on the same device, in the same token order:
        kept logits unchanged, the others -inf.

    Raises:
        ValueError: if k < 1.
    """
    raise NotImplementedError("sampling.top_k_filter")


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose total
    probability reaches p; set the others to -inf.

    Sort the probabilities softmax(logits) in descending order and add them up: the
    first token whose running total is >= p crosses p. It and every more probable token
    are kept (so the most probable token is always kept); the rest are dropped. Ties: a
    token whose logit equals that of the token crossing p is kept too.

    Args:
        logits: (..., V) floating tensor; it may already hold -inf.
        p: in (0, 1]. p = 1 keeps every token, even those whose probability
            rounds to 0.

    Returns:
        (..., V) in the same dtype, on the same device, in the same token order as
        `logits`: kept logits unchanged, the others -inf.

    Raises:
        ValueError: if p is not in (0, 1].
    """
    raise NotImplementedError("sampling.top_p_filter")


def sample(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row of logits.

    temperature == 0 means greedy decoding: the argmax of each row, whatever top_k and
    top_p say. Otherwise, in this order: apply_temperature, then top_k_filter (if top_k is
    not None), then top_p_filter (if top_p is not None), then one draw from the softmax
    of what is left, using `generator` for every random number, so that the same
    generator state gives the same tokens.

    Args:
        logits: (..., V) floating tensor, any floating dtype.
        temperature: >= 0; 0 is greedy.
        top_k: None or >= 1.
        top_p: None or in (0, 1].
        generator: torch.Generator on logits' device, or None for torch's global one.

    Returns:
        int64 token ids of shape logits.shape[:-1] (a 0-d tensor for 1-D logits), on
        logits' device.

    Raises:
        ValueError: for a negative temperature, or a bad top_k or top_p (as the
            functions above).
    """
    raise NotImplementedError("sampling.sample")


def apply_repetition_penalty(logits: Tensor, prev_ids: Tensor, penalty: float) -> Tensor:
    """Penalise every token that already occurs in the row's previous tokens.

    For each token id present in a row's prev_ids, that row's logit is divided by
    `penalty` if it is positive and multiplied by `penalty` otherwise (so penalty > 1
    always makes the token less likely). A token is penalised once however often it
    occurs.

    Args:
        logits: (..., V) floating tensor.
        prev_ids: (..., N) int64 token ids in [0, V), with the same leading dims as
            logits; N may be 0.
        penalty: > 0; 1 changes nothing, > 1 discourages repetition.

    Returns:
        (..., V) in logits' dtype and on its device.

    Raises:
        ValueError: if penalty <= 0.
    """
    raise NotImplementedError("sampling.apply_repetition_penalty")
