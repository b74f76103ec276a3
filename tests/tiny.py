"""Tiny random models and in-memory tokenizers for tests: never a download.

The tokenizer is byte-level with no merges: every UTF-8 byte b of the text is the
token id `b + len(SPECIALS)`, so tests can write expected ids by hand.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from contextflow_core.models.encoders import TextEncoder

SPECIALS = ["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>"]
PAD, EOS, BOS, USER, ASSISTANT, SYSTEM = range(len(SPECIALS))
OFFSET = len(SPECIALS)
VOCAB_SIZE = OFFSET + 256

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{% elif m['role'] == 'user' %}<|user|>{% else %}<|assistant|>{% endif %}"
    "{{ m['content'] }}{% if m['role'] != 'assistant' %}{{ '\\n' }}{% else %}<eos>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_ids(text: str) -> list[int]:
    """Expected token ids of `text` under the tiny tokenizer."""
    return [b + OFFSET for b in text.encode("utf-8")]


def tiny_tokenizer(chat_template: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
    byte_chars = bytes_to_unicode()  # byte -> printable char
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in range(256):
        vocab[byte_chars[b]] = b + OFFSET
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        bos_token="<bos>",
        pad_token="<pad>" if pad else None,
        model_max_length=512,
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_generator(seed: int = 0, vocab_size: int = VOCAB_SIZE, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model.eval()


def tiny_bert(seed: int = 0, hidden: int = 16) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
    )
    return BertModel(cfg).eval()


def tiny_encoder(seed: int = 0, hidden: int = 16, normalize: bool = False) -> TextEncoder:
    return TextEncoder(
        tiny_bert(seed, hidden), tiny_tokenizer(chat_template=False), pooling="mean",
        normalize=normalize, max_length=128, name="tiny-bert",
    )
