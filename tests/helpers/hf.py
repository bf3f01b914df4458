"""Tiny Hugging Face models built from configs (nothing downloaded) and random token data for them."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

VOCAB, LENGTH = 99, 8


def tiny_bert(layers: int = 2, seed: int = 0, **config) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=37, vocab_size=VOCAB,
        max_position_embeddings=2 * LENGTH, **config,
    )  # fmt: skip
    return BertForSequenceClassification(cfg)


def tiny_gpt2(layers: int = 2, seed: int = 0, **config) -> GPT2LMHeadModel:
    """GPT-2 with its LM head tied to the token embedding (``wte``)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_embd=32, n_layer=layers, n_head=2, vocab_size=VOCAB, n_positions=2 * LENGTH, bos_token_id=0,
        eos_token_id=0, **config,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


def bert_layers(model: BertForSequenceClassification) -> list:
    return [model.bert.embeddings, *model.bert.encoder.layer]


def gpt2_layers(model: GPT2LMHeadModel) -> list:
    """The position embedding then the blocks: ``wte`` is the head's weight too, so it trains to the end."""
    return [model.transformer.wpe, *model.transformer.h]


def token_data(n: int, lm: bool = False, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` examples of random tokens: labels are the tokens (``lm``) or a random class of two."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    classes = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i] if lm else classes[i]} for i in range(n)]
