"""FlashAttention in PyTorch: tiled attention with the online softmax, forward and backward.

Attention as usually written builds the whole (T, S) matrix of scores, softmaxes it and
multiplies by v: memory grows with T * S. FlashAttention never holds more than one
block_q x block_k tile of scores: for each block of queries it walks over the blocks of
keys, keeping a running max, a running sum and an accumulator that it rescales whenever
the max grows (the online softmax), and it skips tiles the causal or sliding-window mask
hides completely. The backward pass recomputes each tile's probabilities from the saved
log-sum-exp instead of storing them (FlashAttention-2).

You write the forward, the backward and the torch.autograd.Function joining them. The
grader compares values, log-sum-exps and gradients with torch's attention in float64,
records the size of every tensor your code makes (no (T, S) matrix may appear), counts
FLOPs (masked tiles must be skipped) and forbids every softmax and fused attention kernel.

Run the grader:   make check topic=flash_attention
Hints:            exercises/flash_attention/README.md
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[Tensor, Tensor]:
    """softmax(q @ k^T * scale, masked) @ v, one block_q x block_k tile of scores at a time.

    Query i attends key j when the mask allows it:
      - no mask (is_causal=False, window=None): every key;
      - is_causal=True: j <= i', where i' = i + S - T (bottom-right aligned, as in a KV
        cache: the T queries are the last T of the S positions);
      - window=w (a positive int; Mistral's sliding window): i' - w < j <= i', the w most
        recent positions up to and including its own. The window is causal by itself, so
        is_causal is implied.
    A query that may attend no key at all (causal with T > S: the first T - S queries)
    gets an output of zeros and a log-sum-exp of -inf, as torch's attention gives.

    Args:
        q: (B, H, T, D) queries, float16, bfloat16, float32 or float64.
        k: (B, H, S, D) keys, q's dtype and device.
        v: (B, H, S, D) values, q's dtype and device.
        is_causal: bottom-right aligned causal mask.
        scale: multiplies q @ k^T; None means 1 / sqrt(D).
        window: None, or w >= 1 for the sliding window above.
        block_q: queries per tile (any int >= 1; T need not be a multiple of it).
        block_k: keys per tile (any int >= 1; S need not be a multiple of it).

    Returns:
        (out, lse):
        out: (B, H, T, D) in q's dtype, on q's device.
        lse: (B, H, T) float32, the log-sum-exp over the allowed keys of each query's
            scaled scores (-inf where no key is allowed).
        float16 and bfloat16 inputs are computed in float32 (scores, running max and sum,
        accumulator), float64 in float64.

    Rules:
      - no softmax and no fused attention: any torch function or aten op whose name
        contains "softmax", "attention" or "scaled_dot_product" is refused;
      - memory: no tensor you make (scores, masks, copies) may hold more elements than a
        small multiple of max(B * H * block_q * block_k, B * H * T * D): never a (T, S)
        score or mask matrix, nor a (block_q, S) row of them;
      - work: a tile the mask hides completely is skipped, not computed and masked (the
        grader counts FLOPs: causal costs about half of unmasked, a window w about T * w);
      - the tiles of all batches and heads are computed together (no Python loop over B
        or H), and q, k, v are not modified.
    """
    raise NotImplementedError("flash_attention.flash_attention")


def flash_attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of flash_attention's out with respect to q, k and v (FlashAttention-2).

    Each tile's probabilities are recomputed from the saved log-sum-exp,
    P_ij = exp(q_i . k_j * scale - lse_i) (0 where masked), never stored. With
    D_i = rowsum(dO_i * O_i) (one number per query):
        dV_j += P^T @ dO_i
        dS    = P * (dO_i @ V_j^T - D_i)
        dQ_i += dS @ K_j * scale
        dK_j += dS^T @ Q_i * scale

    Args:
        q, k, v, and the keyword arguments: exactly as given to flash_attention.
        out: (B, H, T, D), flash_attention's output for them (q's dtype).
        lse: (B, H, T) float32, flash_attention's log-sum-exp for them (-inf for a query
            that sees no key: its gradients are zero).
        grad_out: (B, H, T, D), the gradient of the loss with respect to out (q's dtype).

    Returns:
        (dq, dk, dv): the shapes and dtypes of q, k and v, on their device; float16 and
        bfloat16 are computed in float32.

    Rules: those of flash_attention: no softmax or fused attention, no tensor larger than
    a small multiple of max(B * H * block_q * block_k, B * H * S * D, B * H * T * D) (so
    never a (T, S) matrix), tiles the mask hides completely are skipped, no loop over B or
    H, and no input is modified.
    """
    raise NotImplementedError("flash_attention.flash_attention_backward")


class FlashAttention(torch.autograd.Function):
    """Attention under autograd with FlashAttention's memory: the forward saves q, k, v, out
    and lse (never the probabilities), and the backward recomputes them tile by tile.

    FlashAttention.apply(q, k, v, is_causal=False, scale=None, window=None, block_q=64,
    block_k=64), with the arguments given by position (autograd.Function.apply takes no
    keywords), returns out (B, H, T, D) in q's dtype, like
    F.scaled_dot_product_attention(q, k, v, is_causal=..., scale=...) with this kata's
    bottom-right causal mask and sliding window; out.backward(...) gives q, k and v their
    gradients.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None,
                window: int | None = None, block_q: int = 64, block_k: int = 64) -> Tensor:  # fmt: skip
        """Calls flash_attention, saves (q, k, v, out, lse) with ctx.save_for_backward and
        the options on ctx, and returns out. Nothing else is saved: the grader watches
        every tensor saved for backward, and their sizes must add up to no more than
        q, k, v, out and lse do."""
        raise NotImplementedError("flash_attention.FlashAttention.forward")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        """Calls flash_attention_backward with what forward saved; returns (dq, dk, dv)
        followed by None for each of the five non-tensor arguments."""
        raise NotImplementedError("flash_attention.FlashAttention.backward")
