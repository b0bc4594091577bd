"""Tiny seeded causal LMs shared by the tests of :mod:`tomesd.llm` (offline, random weights)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tokenizers.processors import TemplateProcessing
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tomesd.llm.task import build_tree_tokenizer

VOCAB = 64
HIDDEN = 32


def tiny_qwen(seed: int = 0, hidden: int = HIDDEN, vocab: int = VOCAB, init_range: float = 0.02) -> Qwen2ForCausalLM:
    """A 2-layer Qwen2 with random weights, in eval mode (``init_range``: the weights' init std)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, initializer_range=init_range,
    )
    return Qwen2ForCausalLM(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights, in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(seed: int = 0, vocab: int = VOCAB) -> Gemma3ForCausalLM:
    """A 2-layer Gemma-3 with random weights, in eval mode: a sliding-window layer (window 4) then a global one;
    its embedding scales by sqrt(hidden) inside the embedding module, as the real model's does."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=8,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return Gemma3ForCausalLM(config).eval()


def tree_tokenizer_with_bos() -> PreTrainedTokenizerFast:
    """The tree task's word-level tokenizer, made to put a ``[BOS]`` before every text (as Gemma's and Llama's do)."""
    tokenizer = build_tree_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[BOS]"})
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", tokenizer.bos_token_id)]
    )
    return tokenizer


def padded_batch(lengths: list[int], side: str, seed: int = 0, vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, max(lengths)) of the given real lengths, padded with id 0 on ``side``, and the mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        span = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, span] = torch.randint(3, vocab, (n,), generator=generator)
        mask[row, span] = 1
    return ids, mask
