"""A byte-level GPT the size nanoGPT trains on a CPU: the language model of the ``pystdlib`` task.

nanoGPT's architecture (Karpathy, ``model.py``): token and position embeddings, ``depth`` pre-norm transformer
blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> 4x MLP with GELU -> residual), a final
LayerNorm and a linear head over the 256 byte values; nanoGPT's initialisation (normal, std 0.02; the residual
projections scaled by ``1 / sqrt(2 depth)``). Two differences, both for FreezeOut: the head is not tied to the
token embedding (a tied head would freeze with the embedding, which ``param_groups`` refuses; at a vocabulary of
256 the untied head costs ``256 x width`` parameters), and no dropout (nanoGPT's default for small runs too).

The freezable layers are the embeddings (one layer, the stem) and every block, input side first; the final
LayerNorm and the head are the rest. Heads of 32 channels (nanoGPT's 128-wide, 4-head model), one head below 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_int

__all__ = ["GPT", "Block", "Embeddings", "check_gpt_depth", "gpt", "token_example"]

VOCAB = 256  # bytes
BLOCK_SIZE = 256  # positions the model can take; the pystdlib task's context is within it
HEAD_WIDTH = 32
MAX_DEPTH = 96


def check_gpt_depth(depth: int) -> int:
    """The number of transformer blocks."""
    return check_int("depth", depth, 1, MAX_DEPTH, what="transformer blocks of gpt")


def _heads(width: int) -> int:
    heads = max(1, width // HEAD_WIDTH)
    if width % heads:
        raise ValueError(
            f"growth (the gpt's width) must be below {HEAD_WIDTH} or a multiple of {HEAD_WIDTH}, got {width}"
        )
    return heads


class Embeddings(nn.Module):
    """Token plus position embeddings: the stem."""

    def __init__(self, vocab: int, block_size: int, width: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(block_size, width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"sequence of {t} tokens is longer than the model's {self.positions.num_embeddings}")
        return self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))


class Block(nn.Module):
    """nanoGPT's transformer block: pre-norm causal self-attention and MLP, each with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.attn_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn_proj(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    """Byte-level GPT; ``layers`` lists the freezable layers (the embeddings, then each block) in forward order.

    Input: token ids ``(batch, length)``, ``length <= BLOCK_SIZE``; output: logits ``(batch, length, vocab)``.
    """

    def __init__(self, depth: int = 4, width: int = 128, vocab: int = VOCAB, block_size: int = BLOCK_SIZE) -> None:
        super().__init__()
        check_gpt_depth(depth)
        width = check_int("width", width, 1)
        heads = _heads(width)
        self.depth, self.width = depth, width
        self.embed = Embeddings(check_int("vocab", vocab, 2), check_int("block_size", block_size, 1), width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # nanoGPT: residual projections scaled by depth
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * depth))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def layers(self) -> list[nn.Module]:
        return [self.embed, *self.blocks]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(self.blocks(self.embed(idx))))


def gpt(depth: int = 4, width: int = 128, num_classes: int = VOCAB, in_channels: int = 1) -> GPT:
    """The registry's builder: ``num_classes`` is the vocabulary; ``in_channels`` is not a GPT's (one stream)."""
    return GPT(depth=depth, width=width, vocab=num_classes)


def token_example(shape: tuple[int, ...], batch: int, num_classes: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """A seeded random batch of token ids ``(batch, length)`` below ``num_classes`` (the vocabulary), ``length`` the
    last entry of ``shape`` (at most ``BLOCK_SIZE``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (batch, min(shape[-1], BLOCK_SIZE)), generator=g)
