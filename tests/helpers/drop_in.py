"""What users bring to FreezeOut, written here the way their libraries write it: nanoGPT's model and its
``configure_optimizers``, timm's ``create_optimizer_v2(..., layer_decay=)`` groups, and the closed form of the
paper's per-layer LR to check them against (docs/METHOD.md, "The schedule")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.lookalikes import CausalBlock


class NanoGPT(nn.Module):
    """nanoGPT's ``GPT``: ``transformer.{wte, wpe, drop, h, ln_f}`` and an ``lm_head`` tied to ``wte``;
    ``forward(idx, targets)`` returns ``(logits, loss)``."""

    def __init__(self, vocab: int = 17, dim: int = 16, depth: int = 3, block_size: int = 8) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, dim),
                wpe=nn.Embedding(block_size, dim),
                drop=nn.Dropout(0.0),
                h=nn.ModuleList(CausalBlock(dim, 2) for _ in range(depth)),
                ln_f=nn.LayerNorm(dim),
            )
        )
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # nanoGPT's weight tying

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # nanoGPT's own: every 2-d parameter decays (embeddings included), biases and norms do not
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)


def get_batch(step: int, batch_size: int = 4, block_size: int = 8, vocab: int = 17):
    g = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(vocab, (batch_size, block_size + 1), generator=g)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()  # nanoGPT stacks fresh rows


def create_optimizer_v2(model: nn.Module, opt: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                        layer_decay: float | None = None, tail_with_last_block: bool = True):  # fmt: skip
    """timm's ``create_optimizer_v2`` with ``param_groups_layer_decay`` on a ViT: one group per layer id and decay
    kind, ``lr_scale = layer_decay ** (layer_max - layer_id)``, biases, 1-d parameters and the model's
    ``no_weight_decay()`` names undecayed. Layer ids: the stem (patch embedding, class token, position embedding)
    0, block ``i`` ``i + 1``, everything else the last id, which (``tail_with_last_block``, as timm's coarse
    matchers group it) the last block shares with the final norm and the head."""
    if opt != "adamw":
        raise ValueError(f"this look-alike builds adamw only, got {opt!r}")
    depth = len(model.blocks)
    layer_max = depth if tail_with_last_block else depth + 1

    def layer_id(name: str) -> int:
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return min(int(name.split(".")[1]) + 1, layer_max)
        return layer_max

    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        undecayed = p.ndim == 1 or name in skip
        i = layer_id(name) if layer_decay is not None else 0
        key = f"layer_{i}_{'no_decay' if undecayed else 'decay'}"
        scale = layer_decay ** (layer_max - i) if layer_decay is not None else 1.0
        group = groups.setdefault(key, {"lr_scale": scale, "weight_decay": 0.0 if undecayed else weight_decay,
                                        "params": []})  # fmt: skip
        group["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=lr, weight_decay=weight_decay)


def closed_form_lr(step: int, total: int, layer: int | None, n: int, base: float, *, t0: float = 0.8,
                   schedule: str = "cubic", scaled: bool = True, warmup: int = 0) -> float:  # fmt: skip
    """The paper's LR at optimizer step ``step`` for a parameter of layer ``layer`` of ``n`` (None: the rest)."""
    t = min(step / total, 1.0)
    if layer is None:
        t_i, scaled = 1.0, False
    else:
        t_i = t0 + (1 - t0) * layer / n
        t_i = t_i**3 if schedule == "cubic" else t_i
    if t >= t_i:
        return 0.0
    lr0 = base / t_i if scaled else base
    factor = 1.0 if warmup == 0 else min(1.0, step / warmup)
    return factor * 0.5 * lr0 * (1 + math.cos(math.pi * t / t_i))
