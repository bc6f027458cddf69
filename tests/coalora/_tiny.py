"""Tiny models and synthetic batches shared by the training-side tests."""

from __future__ import annotations

from typing import Iterator

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=100, max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def separable_batches(seed: int = 0, batch: int = 16, length: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """Endless classification batches a tiny model can learn: label = whether token 5 is present."""
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(6, 100, (batch, length), generator=g)
        labels = torch.randint(0, 2, (batch,), generator=g)
        ids[labels == 1, 0] = 5
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def fixed_batches(n: int, seed: int = 99) -> list[dict[str, torch.Tensor]]:
    it = separable_batches(seed)
    return [next(it) for _ in range(n)]
