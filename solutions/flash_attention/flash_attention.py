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
    # BEGIN SOLUTION
    B, H, T, D = q.shape
    S = k.shape[-2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)  # half precision: float32 statistics
    offset = S - T  # query i sits at position i + offset among the keys (bottom-right)
    masked = is_causal or window is not None
    out = torch.zeros(B, H, T, D, dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, T), -math.inf, dtype=torch.float32, device=q.device)

    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)  # the last block may be shorter: ragged T
        # Keys this block of queries may see: [lo, hi). Tiles outside are never computed.
        hi = min(S, i1 + offset) if masked else S
        lo = max(0, i0 + offset - window + 1) if window is not None else 0
        if hi <= lo:
            continue  # no query here sees any key: zeros and -inf, as initialised
        # Scaling q once per block instead of every tile's scores: the same product.
        qi = q[:, :, i0:i1].to(compute) * scale  # (B, H, bq, D)
        m = torch.full((B, H, i1 - i0), -math.inf, dtype=compute, device=q.device)  # running max
        l = torch.zeros(B, H, i1 - i0, dtype=compute, device=q.device)  # running sum of exp
        acc = torch.zeros(B, H, i1 - i0, D, dtype=compute, device=q.device)  # running sum of p @ v
        rows = torch.arange(i0, i1, device=q.device)[:, None] + offset  # (bq, 1) positions i'

        for j0 in range(lo - lo % block_k, hi, block_k):  # tiles on the block_k grid
            j1 = min(j0 + block_k, S)
            kj = k[:, :, j0:j1].to(compute)  # (B, H, bk, D)
            vj = v[:, :, j0:j1].to(compute)
            s = qi @ kj.transpose(-2, -1)  # (B, H, bq, bk): the only scores that exist
            # Only tiles crossing the mask's edge need a mask; the others are all allowed.
            crosses_diagonal = masked and j1 - 1 > i0 + offset
            crosses_window = window is not None and j0 <= i1 - 1 + offset - window
            if crosses_diagonal or crosses_window:
                cols = torch.arange(j0, j1, device=q.device)[None, :]  # (1, bk)
                allowed = cols <= rows  # (bq, bk)
                if window is not None:
                    allowed = allowed & (cols > rows - window)
                s = s.masked_fill(~allowed, -math.inf)

            m_new = torch.maximum(m, s.amax(dim=-1))  # (B, H, bq)
            # A row that has seen no allowed key yet keeps m = -inf; exp(-inf - -inf) would
            # be nan, so such rows subtract 0 instead (their scores are all -inf: exp gives 0).
            m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)
            p = torch.exp(s - m_safe[..., None])  # (B, H, bq, bk), at most 1
            alpha = torch.exp(m - m_safe)  # rescales what was summed under the old max
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ vj  # (B, H, bq, D)
            m = m_new

        seen = l > 0  # rows with at least one allowed key
        out[:, :, i0:i1] = torch.where(seen[..., None], acc / l.clamp_min(1e-30)[..., None], 0.0).to(q.dtype)
        lse[:, :, i0:i1] = torch.where(seen, m + torch.log(l), -math.inf).to(torch.float32)
    return out, lse
    # END SOLUTION


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
    # BEGIN SOLUTION
    B, H, T, D = q.shape
    S = k.shape[-2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    offset = S - T
    masked = is_causal or window is not None

    # D_i = rowsum(dO * O) = sum_j P_ij dP_ij: the term the softmax's Jacobian subtracts.
    delta = (grad_out.to(compute) * out.to(compute)).sum(dim=-1)  # (B, H, T)
    # Rows that see no key have lse = -inf; all their scores are masked to -inf, so they
    # subtract 0 instead (exp(-inf - -inf) would be nan).
    lse_c = lse.to(compute)
    lse_c = lse_c.masked_fill(lse_c == -math.inf, 0.0)
    dq = torch.zeros(B, H, T, D, dtype=compute, device=q.device)
    dk = torch.zeros(B, H, S, D, dtype=compute, device=q.device)
    dv = torch.zeros(B, H, S, D, dtype=compute, device=q.device)

    # Outer loop over key blocks, as FlashAttention-2: dK_j and dV_j stay in one place
    # while the query blocks that see them stream past; dQ_i is accumulated in place.
    for j0 in range(0, S, block_k):
        j1 = min(j0 + block_k, S)
        # Queries that see some key of this block: [q_lo, q_hi).
        q_lo = max(0, j0 - offset) if masked else 0
        q_hi = min(T, j1 - 1 + window - offset) if window is not None else T
        if q_hi <= q_lo:
            continue
        kj = k[:, :, j0:j1].to(compute)  # (B, H, bk, D)
        vj = v[:, :, j0:j1].to(compute)
        dk_j = torch.zeros_like(kj)
        dv_j = torch.zeros_like(vj)
        cols = torch.arange(j0, j1, device=q.device)[None, :]  # (1, bk)

        for i0 in range(q_lo - q_lo % block_q, q_hi, block_q):
            i1 = min(i0 + block_q, T)
            qi = q[:, :, i0:i1].to(compute)  # (B, H, bq, D)
            do_i = grad_out[:, :, i0:i1].to(compute)  # (B, H, bq, D)
            s = (qi @ kj.transpose(-2, -1)) * scale  # (B, H, bq, bk)
            crosses_diagonal = masked and j1 - 1 > i0 + offset
            crosses_window = window is not None and j0 <= i1 - 1 + offset - window
            if crosses_diagonal or crosses_window:
                rows = torch.arange(i0, i1, device=q.device)[:, None] + offset  # (bq, 1)
                allowed = cols <= rows
                if window is not None:
                    allowed = allowed & (cols > rows - window)
                s = s.masked_fill(~allowed, -math.inf)
            p = torch.exp(s - lse_c[:, :, i0:i1, None])  # (B, H, bq, bk): the forward's probabilities

            dv_j += p.transpose(-2, -1) @ do_i  # (B, H, bk, D)
            dp = do_i @ vj.transpose(-2, -1)  # (B, H, bq, bk)
            ds = p * (dp - delta[:, :, i0:i1, None])  # (B, H, bq, bk)
            dq[:, :, i0:i1] += (ds @ kj) * scale
            dk_j += (ds.transpose(-2, -1) @ qi) * scale

        dk[:, :, j0:j1] = dk_j
        dv[:, :, j0:j1] = dv_j
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    # END SOLUTION


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
        # BEGIN SOLUTION
        out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale, window=window, block_q=block_q, block_k=block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = dict(is_causal=is_causal, scale=scale, window=window, block_q=block_q, block_k=block_k)
        return out
        # END SOLUTION

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        """Calls flash_attention_backward with what forward saved; returns (dq, dk, dv)
        followed by None for each of the five non-tensor arguments."""
        # BEGIN SOLUTION
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, grad_out, **ctx.options)
        return dq, dk, dv, None, None, None, None, None
        # END SOLUTION
