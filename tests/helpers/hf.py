"""Tiny Hugging Face models built from configs (no download, no hub) and inputs for them.

Each builder seeds torch first, so the same call gives the same weights. Two blocks, hidden size 32: a forward
pass takes a few milliseconds.
"""

from __future__ import annotations

import os

import torch
import transformers
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

VOCAB, HIDDEN, HEADS, FFN, CLASSES = 99, 32, 2, 37, 3
_TEXT = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64
)


def tiny_bert(kind: str = "model", layers: int = 2, seed: int = 0, **config: object) -> nn.Module:
    """``BertModel`` (``kind="model"``), ``BertForSequenceClassification`` ("classify") or ``BertForMaskedLM``
    ("mlm", its decoder tied to the word embeddings); ``config`` adds to the ``BertConfig``."""
    cls = {"model": "BertModel", "classify": "BertForSequenceClassification", "mlm": "BertForMaskedLM"}[kind]
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**_TEXT, **config}, num_hidden_layers=layers, num_labels=CLASSES)
    return getattr(transformers, cls)(config)


def tiny_roberta(layers: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(**_TEXT, num_hidden_layers=layers, num_labels=CLASSES, pad_token_id=1)
    return transformers.RobertaForSequenceClassification(config)


def tiny_gpt2(layers: int = 2, seed: int = 0) -> nn.Module:
    """``GPT2LMHeadModel``: its ``lm_head`` is tied to the token embedding ``transformer.wte``."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=HIDDEN, n_layer=layers, n_head=HEADS, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_vit(layers: int = 2, seed: int = 0, image: int = 16) -> nn.Module:
    """``ViTForImageClassification`` on ``image`` x ``image`` RGB inputs in 8 x 8 patches."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, intermediate_size=FFN,
        image_size=image, patch_size=8, num_labels=CLASSES,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


def tiny_t5_encoder(layers: int = 2, seed: int = 0) -> nn.Module:
    """``T5EncoderModel``: ``encoder.embed_tokens`` shares its weight with ``shared``, which never runs."""
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=layers, num_heads=HEADS
    )
    return transformers.T5EncoderModel(config)


def tokens(batch: int = 2, length: int = 7, seed: int = 0, labels: bool = False) -> transformers.BatchEncoding:
    """What a tokenizer returns: ``input_ids`` and ``attention_mask`` (the last token of the first row padded),
    with ``labels`` (the ids themselves, a language model's targets) if asked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    data = {"input_ids": ids, "attention_mask": mask}
    if labels:
        data["labels"] = ids.clone()
    return transformers.BatchEncoding(data)


def pixels(batch: int = 2, image: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, image, image, generator=g)}


# For the Trainer tests: a classifier, its layers given by hand, and a dataset of single examples.
LENGTH = 8


def bert_layers(model: nn.Module) -> list:
    return [model.bert.embeddings, *model.bert.encoder.layer]


def gpt2_layers(model: nn.Module) -> list:
    """The position embedding then the blocks: ``wte`` is the head's weight too, so it trains to the end."""
    return [model.transformer.wpe, *model.transformer.h]


def token_data(n: int, lm: bool = False, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` examples of random tokens: labels are the tokens (``lm``) or a random class of two."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    classes = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i] if lm else classes[i]} for i in range(n)]
