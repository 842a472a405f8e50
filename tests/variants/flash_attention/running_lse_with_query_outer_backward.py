"""Variant: the forward keeps a running log-sum-exp and an already-normalised output
(merged tile by tile with torch.logaddexp) instead of a running max, sum and unnormalised
accumulator; key tiles start at the first visible key rather than on the block grid; masks
are applied with torch.where. The backward loops over query blocks outside and key blocks
inside, adding into dk and dv (the FlashAttention-1 order).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG = -math.inf


def _allowed(i0, i1, j0, j1, offset, window, device):
    pos = torch.arange(i0, i1, device=device).unsqueeze(1) + offset  # (bq, 1)
    key = torch.arange(j0, j1, device=device).unsqueeze(0)  # (1, bk)
    ok = key <= pos
    if window is not None:
        ok = torch.logical_and(ok, key > pos - window)
    return ok


def _key_range(i0, i1, S, offset, is_causal, window):
    start, stop = 0, S
    if is_causal or window is not None:
        stop = min(S, i1 + offset)
    if window is not None:
        start = max(0, i0 + offset - window + 1)
    return start, stop


def flash_attention(q, k, v, *, is_causal=False, scale=None, window=None, block_q=64, block_k=64):
    B, H, T, D = q.shape
    S = k.shape[2]
    sm = D**-0.5 if scale is None else scale
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    offset = S - T
    masked = is_causal or window is not None
    outs, lses = [], []
    for i0 in range(0, T, block_q):
        i1 = min(T, i0 + block_q)
        start, stop = _key_range(i0, i1, S, offset, is_causal, window)
        o = q.new_zeros(B, H, i1 - i0, D, dtype=work)
        run = q.new_full((B, H, i1 - i0), NEG, dtype=work)
        qb = q[:, :, i0:i1].to(work)
        for j0 in range(start, stop, block_k):
            j1 = min(stop, j0 + block_k)
            s = torch.matmul(qb, k[:, :, j0:j1].to(work).transpose(2, 3)) * sm
            if masked:
                s = torch.where(_allowed(i0, i1, j0, j1, offset, window, q.device), s, NEG)
            new = torch.logaddexp(run, torch.logsumexp(s, dim=3))
            safe = torch.where(torch.isinf(new), 0.0, new)
            o = o * torch.exp(run - safe).unsqueeze(3) + torch.matmul(torch.exp(s - safe.unsqueeze(3)), v[:, :, j0:j1].to(work))
            run = new
        outs.append(o.to(q.dtype))
        lses.append(run.float())
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def flash_attention_backward(q, k, v, out, lse, grad_out, *, is_causal=False, scale=None, window=None, block_q=64, block_k=64):
    B, H, T, D = q.shape
    S = k.shape[2]
    sm = D**-0.5 if scale is None else scale
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    offset = S - T
    masked = is_causal or window is not None
    dk = torch.zeros(B, H, S, D, dtype=work, device=q.device)
    dv = torch.zeros(B, H, S, D, dtype=work, device=q.device)
    dqs = []
    for i0 in range(0, T, block_q):
        i1 = min(T, i0 + block_q)
        start, stop = _key_range(i0, i1, S, offset, is_causal, window)
        qb = q[:, :, i0:i1].to(work)
        go = grad_out[:, :, i0:i1].to(work)
        row_lse = lse[:, :, i0:i1].to(work)
        row_lse = torch.where(torch.isinf(row_lse), 0.0, row_lse).unsqueeze(3)
        d_i = torch.einsum("bhtd,bhtd->bht", go, out[:, :, i0:i1].to(work)).unsqueeze(3)
        dq_b = torch.zeros_like(qb)
        for j0 in range(start, stop, block_k):
            j1 = min(stop, j0 + block_k)
            kb, vb = k[:, :, j0:j1].to(work), v[:, :, j0:j1].to(work)
            s = torch.matmul(qb, kb.transpose(2, 3)) * sm
            if masked:
                s = torch.where(_allowed(i0, i1, j0, j1, offset, window, q.device), s, NEG)
            p = torch.exp(s - row_lse)
            dv[:, :, j0:j1] += torch.matmul(p.transpose(2, 3), go)
            ds = p * (torch.matmul(go, vb.transpose(2, 3)) - d_i) * sm
            dq_b = dq_b + torch.matmul(ds, kb)
            dk[:, :, j0:j1] += torch.matmul(ds.transpose(2, 3), qb)
        dqs.append(dq_b)
    return torch.cat(dqs, dim=2).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal=False, scale=None, window=None, block_q=64, block_k=64):
        out, lse = flash_attention(q, k, v, is_causal=is_causal, scale=scale, window=window, block_q=block_q, block_k=block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (is_causal, scale, window, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        is_causal, scale, window, block_q, block_k = ctx.args
        grads = flash_attention_backward(
            q, k, v, out, lse, grad_out, is_causal=is_causal, scale=scale, window=window, block_q=block_q, block_k=block_k
        )
        return (*grads, None, None, None, None, None)
