"""Tiny random models built in code (BERT, Llama, GPT-2 shapes) and their byte-level tokenizer:
no files, no network; for tests and the quickest runs."""

from __future__ import annotations

from typing import Any

import torch

from coalora.errors import ModelError
from coalora.model.registry import MODEL_REGISTRY, _check_task

TINY_KINDS: tuple[str, ...] = ("bert", "llama", "gpt2")
# Multiple of 64 and larger than the 261 ids the tiny byte-level tokenizer uses.
TINY_VOCAB_SIZE = 1024
TINY_MAX_POSITIONS = 512
# Tiny tokenizer layout: five special tokens, then byte b has id TINY_BYTE_OFFSET + b.
TINY_SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
TINY_PAD_ID, TINY_UNK_ID, TINY_BOS_ID, TINY_EOS_ID, TINY_MASK_ID = range(5)
TINY_BYTE_OFFSET = len(TINY_SPECIALS)


# ---------------------------------------------------------------------- tiny models
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others to code points from 256 up, in order.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_tokenizer(kind: str = "llama", max_length: int = TINY_MAX_POSITIONS) -> Any:
    """A byte-level tokenizer built in code: every UTF-8 byte is one token, nothing is unknown.

    Ids: ``<pad>``=0, ``<unk>``=1, ``<s>``=2, ``</s>``=3, ``<mask>``=4, byte ``b`` = ``5 + b``
    (261 ids, inside the tiny models' vocabulary of 1024). For ``"bert"`` the tokenizer wraps a text
    as ``<s> text </s>`` (the CLS/SEP roles, RoBERTa style); for the causal kinds it adds nothing
    (the LM data pipeline appends ``</s>`` as end of text itself). No merges: sequences are one
    token per byte, which is fine for tests and keeps the tokenizer free of any training corpus.
    """
    _check_kind(kind)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    for b, ch in _byte_to_unicode().items():
        vocab[ch] = TINY_BYTE_OFFSET + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> $B:1 </s>:1",
            special_tokens=[("<s>", TINY_BOS_ID), ("</s>", TINY_EOS_ID)],
        )
    tok.add_special_tokens(list(TINY_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=max_length,
    )


def _check_kind(kind: str) -> None:
    if kind not in TINY_KINDS:
        raise ModelError(f"unknown tiny model kind {kind!r}; kinds are {list(TINY_KINDS)}")


def _tiny_config(kind: str, num_labels: int) -> Any:
    from transformers import BertConfig, GPT2Config, LlamaConfig

    common: dict[str, Any] = dict(num_labels=num_labels, pad_token_id=TINY_PAD_ID)
    if kind == "bert":
        return BertConfig(
            vocab_size=TINY_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=TINY_MAX_POSITIONS, type_vocab_size=2, **common,
        )
    if kind == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=TINY_MAX_POSITIONS,
            # Tied input/output embeddings, like SmolLM2.
            bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, tie_word_embeddings=True, **common,
        )
    return GPT2Config(
        vocab_size=TINY_VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_inner=128,
        n_positions=TINY_MAX_POSITIONS, bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, **common,
    )


def build_tiny_model(
    kind: str, task: str | None = None, seed: int = 0, num_labels: int = 2
) -> torch.nn.Module:
    """A tiny random transformer built in code, for fast tests.

    Shapes: 2 blocks, hidden 64, 4 heads, MLP 128, vocabulary 1024, 512 positions.

    - ``"bert"``: ``BertForSequenceClassification``; 12 target matrices of shapes (64, 64) ×4,
      (128, 64), (64, 128).
    - ``"llama"``: ``LlamaForCausalLM`` (2 KV heads: k/v are (32, 64)), or
      ``LlamaForSequenceClassification`` with ``task="classification"``; 14 target matrices.
    - ``"gpt2"``: ``GPT2LMHeadModel`` (``Conv1D`` layers) or ``GPT2ForSequenceClassification``;
      8 target matrices (c_attn (192, 64), c_proj (64, 64), c_fc (128, 64), c_proj (64, 128)).

    Weights depend only on ``seed``; the global torch RNG is left untouched. Returned in eval mode.
    """
    _check_kind(kind)
    spec = MODEL_REGISTRY[f"tiny-{kind}"]
    task = spec.task if task is None else task
    _check_task(task, spec.tasks, f"tiny model kind {kind!r}")
    if num_labels < 1:
        raise ModelError(f"num_labels must be >= 1, got {num_labels}")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _tiny_config(kind, num_labels)
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    return model.eval()
