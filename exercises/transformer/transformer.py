"""Transformer blocks from their parts: a BERT-style encoder block, a LLaMA-style decoder
block with SwiGLU, and a tiny GPT with learned positions and a tied output head.

The parts are given (nn.Linear, nn.LayerNorm, nn.RMSNorm, nn.Embedding and
F.scaled_dot_product_attention are all allowed): the lesson is the wiring. Where each norm
sits (post-norm or pre-norm), what the residual adds to, which mask says what (True marks
padding in a key_padding_mask), where the causal mask goes, and how a tied head shares one
Parameter with the embedding. The grader compares every block with torch's own layer
(nn.TransformerEncoderLayer) or with a float64 reference built from your module's
state_dict, checks gradients, causality, padding and weight tying, and that train and eval
give the same result.

Run the grader:   make check topic=transformer
Hints:            exercises/transformer/README.md
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def self_attention(
    x: Tensor, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, out_proj: nn.Linear, n_heads: int,
    *, attn_mask: Tensor | None = None, is_causal: bool = False,
) -> Tensor:  # fmt: skip
    """Multi-head self-attention with the given projections; both blocks use it.

    Not graded on its own: write it (or anything else) to keep the blocks short.

    Args:
        x: (B, T, D) float.
        q_proj, k_proj, v_proj, out_proj: nn.Linear(D, D) (with or without bias).
        n_heads: H, dividing D; each head has D // H features and its scores are scaled
            by 1/sqrt(D // H).
        attn_mask: None or a bool mask broadcastable to (B, H, T, T), True = may attend
            (F.scaled_dot_product_attention's convention).
        is_causal: query t attends to keys 0..t only.

    Returns:
        (B, T, D): out_proj applied to the heads' outputs side by side.
    """
    raise NotImplementedError("transformer.self_attention")


class EncoderBlock(nn.Module):
    """One transformer encoder layer, the same function as
    nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation=activation,
    batch_first=True, norm_first=norm_first) given the same weights.

    Post-norm (norm_first=False, the original transformer's and BERT's):
        x = norm1(x + attention(x));  x = norm2(x + feed_forward(x))
    Pre-norm (norm_first=True, GPT-2's and most later models'):
        x = x + attention(norm1(x));  x = x + feed_forward(norm2(x))
    where feed_forward(x) = linear2(activation(linear1(x))) and attention is multi-head
    self-attention with n_heads heads of size d_model // n_heads, scaled by
    1/sqrt(d_model // n_heads). No dropout anywhere: train and eval compute the same.

    Args:
        d_model: the model width D.
        n_heads: the number of attention heads H; must divide d_model (else ValueError).
        d_ff: the feed-forward hidden width.
        norm_first: pre-norm (True) or post-norm (False).
        activation: "relu" or "gelu" (the exact, erf-based GELU, torch's default; not the
            tanh approximation); anything else raises ValueError.

    Attributes:
        q_proj, k_proj, v_proj, out_proj: nn.Linear(d_model, d_model), with bias.
        linear1: nn.Linear(d_model, d_ff); linear2: nn.Linear(d_ff, d_model), with bias.
        norm1, norm2: nn.LayerNorm(d_model) (eps 1e-5, with weight and bias).
        These are the only parameters. Initialisation is not graded (the grader sets
        every parameter).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, norm_first: bool = False, activation: str = "relu") -> None:
        super().__init__()
        raise NotImplementedError("transformer.EncoderBlock.__init__")

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        """One encoder layer over a batch of sequences.

        Args:
            x: (B, T, d_model) float, on any device; left unmodified.
            key_padding_mask: None or (B, T) bool on x's device, True marking padding (as
                torch's src_key_padding_mask): no query attends to a padded key. Every
                sequence has at least one real token. Padded positions are computed like
                any other (their queries attend to the real keys), as torch does; nothing
                is zeroed.

        Returns:
            (B, T, d_model) in x's dtype and on x's device.
        """
        raise NotImplementedError("transformer.EncoderBlock.forward")



class SwiGLU(nn.Module):
    """The gated feed-forward of LLaMA and most recent language models:
    down_proj(silu(gate_proj(x)) * up_proj(x)).

    Args:
        d_model: the model width.
        d_hidden: the hidden width.

    Attributes:
        gate_proj, up_proj: nn.Linear(d_model, d_hidden, bias=False).
        down_proj: nn.Linear(d_hidden, d_model, bias=False).
        These are the only parameters.
    """

    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        raise NotImplementedError("transformer.SwiGLU.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., d_model) -> (..., d_model), in x's dtype and on its device."""
        raise NotImplementedError("transformer.SwiGLU.forward")


class DecoderBlock(nn.Module):
    """A LLaMA-style pre-norm decoder block (without rotary embeddings), causal:
        x = x + attention(attn_norm(x))
        x = x + mlp(mlp_norm(x))
    The residual stream x itself is never normalised; each sublayer reads a normalised copy.
    attention is causal multi-head self-attention (query t attends to keys 0..t), n_heads
    heads of size d_model // n_heads, scaled by 1/sqrt(d_model // n_heads), o_proj after the
    heads are merged. No dropout.

    Args:
        d_model: the model width D.
        n_heads: the number of heads H; must divide d_model (else ValueError).
        d_hidden: SwiGLU's hidden width.
        eps: both RMSNorms' eps.

    Attributes:
        attn_norm, mlp_norm: nn.RMSNorm(d_model, eps=eps).
        q_proj, k_proj, v_proj, o_proj: nn.Linear(d_model, d_model, bias=False).
        mlp: SwiGLU(d_model, d_hidden).
        These are the only parameters.
    """

    def __init__(self, d_model: int, n_heads: int, d_hidden: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        raise NotImplementedError("transformer.DecoderBlock.__init__")

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (B, T, d_model) float, on any device; left unmodified.

        Returns:
            (B, T, d_model) in x's dtype and on x's device; position t depends on x[:, :t+1] only.
        """
        raise NotImplementedError("transformer.DecoderBlock.forward")



class TinyGPT(nn.Module):
    """A decoder-only language model: token and learned position embeddings, a stack of
    DecoderBlocks, a final RMSNorm and an output head tied to the token embedding:
        x = tok_emb(ids) + pos_emb(positions 0..T-1)
        x = blocks[n_layers - 1](... blocks[0](x))
        logits = lm_head(norm(x))

    Args:
        vocab_size: V.
        d_model, n_heads, d_hidden: each DecoderBlock's (eps 1e-6).
        n_layers: the number of DecoderBlocks.
        max_seq_len: the number of learned positions.

    Attributes:
        tok_emb: nn.Embedding(vocab_size, d_model).
        pos_emb: nn.Embedding(max_seq_len, d_model).
        blocks: nn.ModuleList of n_layers DecoderBlock(d_model, n_heads, d_hidden).
        norm: nn.RMSNorm(d_model, eps=1e-6).
        lm_head: nn.Linear(d_model, vocab_size, bias=False) whose weight IS tok_emb.weight:
            one Parameter, counted once by parameters(), trained by both uses.
        These are the only parameters: V*D + max_seq_len*D + D + n_layers * (one block's).
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int, d_hidden: int, max_seq_len: int) -> None:
        super().__init__()
        raise NotImplementedError("transformer.TinyGPT.__init__")

    def forward(self, ids: Tensor) -> Tensor:
        """Args:
            ids: (B, T) int64 token ids in [0, vocab_size), on the model's device; T may
                be anything from 1 to max_seq_len; T > max_seq_len raises ValueError.

        Returns:
            (B, T, vocab_size) logits in the model's dtype, on ids' device; position t
            depends on ids[:, :t+1] only.
        """
        raise NotImplementedError("transformer.TinyGPT.forward")
