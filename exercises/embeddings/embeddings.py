"""Embeddings from scratch: a lookup table with padding_idx, nn.Embedding, and EmbeddingBag.

You rebuild what `torch.nn.functional.embedding`, `nn.Embedding` and
`torch.nn.functional.embedding_bag` do, out of indexing and scatter ops. An embedding is a
gather: row `ids[i]` of the table, for every id. The grader compares your code with
torch's own ops (values and gradients, the padding row included), checks the module's
initialisation statistically, forbids torch's embedding kernels, and counts your work: it
must grow with the number of ids, never with the vocabulary (a one-hot matrix times the
table does V times too much).

Run the grader:   make check topic=embeddings
Hints:            exercises/embeddings/README.md
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def embedding(ids: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of `weight` picked by `ids`, as torch.nn.functional.embedding(ids, weight, padding_idx).

    out[i, j, ...] = weight[ids[i, j, ...]]. Gradients flow to `weight` (summed over
    repeated ids), except to the padding row: weight.grad[padding_idx] is zero. The padding
    row's *values* are still returned as they are (F.embedding does not zero them; a module
    keeps that row at zero by initialising it so and never training it).

    Args:
        ids: integer tensor (int64 or int32) of any shape S: 0-d, (N,), (B, T), (B, T, K)...,
            possibly empty or non-contiguous; every value in [0, V). Ids outside [0, V) are
            the caller's error and are not graded (F.embedding raises IndexError on the CPU;
            a negative id does not count from the end).
        weight: (V, D) floating tensor (any float dtype, possibly non-contiguous), the table.
        padding_idx: None, or an index in [-V, V); a negative one counts from the end
            (-1 is row V - 1), as in torch.

    Returns:
        S + (D,): (N, D) for (N,) ids, (B, T, D) for (B, T), (D,) for a 0-d id; in
        weight's dtype, on weight's device, exactly equal to the rows of weight.

    Not supported (not graded): max_norm, norm_type, scale_grad_by_freq, sparse.

    Rules: no torch embedding op (F.embedding, nn.Embedding's forward, or any aten op whose
    name contains "embedding", whatever name reaches it); ids and weight unmodified; no
    Python loop over the ids (the same aten ops for 6 ids as for 35); work and memory that
    grow with the number of ids, not with V: no one-hot matrix, no tensor with V rows (no
    copy or masked version of the whole weight). The grader counts FLOPs and the largest
    tensor made, for V = 64 and V = 4096.
    """
    raise NotImplementedError("embeddings.embedding")


class Embedding(nn.Module):
    """A learned lookup table, as nn.Embedding(num_embeddings, embedding_dim, padding_idx).

    Args:
        num_embeddings: V, the number of rows (the vocabulary size), at least 1.
        embedding_dim: D, the size of each row.
        padding_idx: None, or an index in [-V, V) (a negative one counts from the end);
            anything else raises ValueError.

    Attributes:
        num_embeddings: int, V.
        embedding_dim: int, D.
        padding_idx: None, or the padding row as an index in [0, V): a negative argument is
            stored normalised (-1 becomes V - 1), as nn.Embedding stores it.
        weight: nn.Parameter of shape (V, D), float32 on the CPU, trainable, the only
            parameter and the only state_dict entry. Initialised as nn.Embedding does: every
            entry drawn independently from the standard normal N(0, 1) (not N(0, 0.02), not
            uniform), then the padding row (if any) set to zeros.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        raise NotImplementedError("embeddings.Embedding.__init__")

    def forward(self, ids: Tensor) -> Tensor:
        """embedding(ids, self.weight, self.padding_idx): ids of any shape S -> S + (D,)."""
        raise NotImplementedError("embeddings.Embedding.forward")


def embedding_bag(ids: Tensor, weight: Tensor, offsets: Tensor | None, mode: str = "mean") -> Tensor:
    """The sum, mean or max of each bag of rows, as torch.nn.functional.embedding_bag(ids,
    weight, offsets, mode=mode) (include_last_offset=False).

    Bag b holds the ids ids[offsets[b]:offsets[b + 1]], and the last bag the ids from
    offsets[B - 1] to the end. Equal consecutive offsets (or a last offset equal to N) make
    an empty bag, whose output row is zeros in every mode.

    Args:
        ids: (N,) integer ids in [0, V) (int64 or int32), the bags one after another; or
            (B, L) with offsets None: each row one bag of L ids.
        weight: (V, D) floating tensor, the table.
        offsets: (B,) integer tensor of ids' dtype, non-decreasing, offsets[0] == 0, every
            value in [0, N]: where each bag starts. None when ids is 2-D.
        mode: "sum" (the rows added), "mean" (the sum divided by the bag's size) or "max"
            (the elementwise maximum over the bag's rows); anything else raises ValueError.

    Returns:
        (B, D) in weight's dtype and on weight's device; zeros for an empty bag. Gradients
        reach weight as torch's do: in "sum" each id's row gets its bag's gradient, in
        "mean" that divided by the bag's size, in "max" each output element's gradient goes
        to the row that held the maximum (split in any way between copies of the same id).

    Not supported (not graded): per_sample_weights, include_last_offset=True, padding_idx,
    max_norm, scale_grad_by_freq, sparse.

    Rules: no torch embedding op (any aten op whose name contains "embedding"); inputs
    unmodified; no Python loop over bags or ids (the same aten ops for 4 bags as for 12);
    work and memory that do not grow with V (no one-hot matrix, no tensor with V rows).
    """
    raise NotImplementedError("embeddings.embedding_bag")
