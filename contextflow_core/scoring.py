"""Answer log-likelihoods under the generator: log p_theta(y | f(x, z)).

Boundary: takes tokenized (prompt, answer) sequences from `prompts.py` and a
causal LM; knows nothing of retrieval or marginalisation.

Lean scoring: sequences are left-padded so every answer ends at the last
position; logits are produced only for the T answer positions, so the LM-head
memory scales with answer length, not prompt length. Modes (a registry):

- "logits_to_keep": HF's `logits_to_keep=T+1`; works with any HF causal LM,
  PEFT wrappers and quantized models, and keeps model-specific logit
  processing (soft-capping, scaling).
- "hidden": runs the decoder body, gathers hidden states at answer positions
  and applies the LM head through chunked linear cross-entropy: no logits
  tensor is kept at all. Exact or not taken: it runs only when the head is a
  plain float `nn.Linear` (no LoRA or quantization on it), no prompt-learning
  adapter wraps the model, and the causal-LM class is in `LOGIT_SCALES` (its
  logits are `lm_head(hidden)` times a constant, e.g. Granite's
  `1/logits_scaling`, Cohere's `logit_scale`, reproduced here). Otherwise
  (e.g. Gemma-2 soft-capping, an unlisted architecture) it scores with
  "logits_to_keep" and warns once why; `hidden_scoring_fallback(generator)`
  returns that reason (None when "hidden" runs as asked).
- "full": logits and log-softmax over every position (the naive design the
  benchmarks compare against; exact but memory-hungry).

Shapes: N sequences, L padded length, T answer positions, V vocabulary, H hidden.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .loss import IGNORE_INDEX, linear_token_log_probs, sequence_log_probs, token_log_probs
from .prompts import EncodedPrompt

Scorer = Callable[[torch.nn.Module, dict, int], torch.Tensor]


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}


def _score_logits_to_keep(generator, batch: dict, T: int) -> torch.Tensor:
    out = generator(**_model_inputs(batch), logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :-1]  # (N, T, V)
    return token_log_probs(logits, batch["labels"][:, -T:])


def _score_full(generator, batch: dict, T: int) -> torch.Tensor:
    out = generator(**_model_inputs(batch), use_cache=False)
    logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (N, L-1, V)
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~mask, 0.0)[:, -T:]


def _unit_scale(model) -> float | None:
    return 1.0


# Causal-LM classes (transformers' own) whose forward computes logits as
# `lm_head(decoder(...).last_hidden_state)` times a constant: class name -> the
# constant for a model, or None where that instance post-processes otherwise.
# Every entry is checked against "full" on a tiny config (tests/test_scoring_exact.py).
LOGIT_SCALES: dict[str, Callable[[Any], float | None]] = {  # HF models: config attributes vary by class
    "LlamaForCausalLM": _unit_scale,
    "MistralForCausalLM": _unit_scale,
    "Qwen2ForCausalLM": _unit_scale,
    "Qwen3ForCausalLM": _unit_scale,
    "GemmaForCausalLM": _unit_scale,
    "Phi3ForCausalLM": _unit_scale,
    "SmolLM3ForCausalLM": _unit_scale,
    "Olmo2ForCausalLM": _unit_scale,
    "GraniteForCausalLM": lambda m: 1.0 / float(m.config.logits_scaling),
    "CohereForCausalLM": lambda m: float(m.logit_scale),
    "Gemma2ForCausalLM": lambda m: None if m.config.final_logit_softcapping else 1.0,
}


def _base_model(generator):
    return generator.get_base_model() if hasattr(generator, "get_base_model") else generator


def _lean_head(generator) -> tuple[tuple | None, str]:
    """((weight, bias, scale), "") when "hidden" is exact for `generator`, else (None, reason)."""
    peft_config = getattr(generator, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return None, "a prompt-learning PEFT adapter adds virtual tokens outside the decoder"
    base = _base_model(generator)
    cls = type(base)
    scale_of = LOGIT_SCALES.get(cls.__name__) if cls.__module__.startswith("transformers.models.") else None
    scale = scale_of(base) if scale_of is not None else None
    if scale is None:
        return None, (
            f"{cls.__name__} is not known to compute its logits as lm_head(hidden) times a constant "
            f"(soft-capping or other post-processing; known: {sorted(LOGIT_SCALES)})"
        )
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if type(head) is not torch.nn.Linear or type(weight) is not torch.nn.Parameter or not weight.is_floating_point():
        return None, (
            f"the LM head is {type(head).__module__}.{type(head).__name__}, not a plain float "
            "torch.nn.Linear (LoRA, modules_to_save or quantization on lm_head)"
        )
    if not hasattr(base, "get_decoder"):
        return None, f"{cls.__name__} has no get_decoder()"
    return (weight, head.bias, scale), ""


def hidden_scoring_fallback(generator) -> str | None:
    """Why `scoring="hidden"` would score `generator` with "logits_to_keep" instead; None when it runs as asked."""
    return _lean_head(generator)[1] or None


def _score_hidden(generator, batch: dict, T: int) -> torch.Tensor:
    head, reason = _lean_head(generator)
    if head is None:
        warnings.warn(
            f"scoring='hidden': {reason}; scoring with 'logits_to_keep' instead (exact, keeps the "
            "answer positions' logits). Set RagConfig(scoring='logits_to_keep') to silence this.",
            stacklevel=2,
        )
        return _score_logits_to_keep(generator, batch, T)
    weight, bias, scale = head
    decoder = _base_model(generator).get_decoder()
    hidden = decoder(**_model_inputs(batch), use_cache=False).last_hidden_state  # (N, L, H)
    hidden = hidden[:, -T - 1 : -1]  # (N, T, H) positions that predict the answer
    targets = batch["labels"][:, -T:]
    mask = targets != IGNORE_INDEX
    h = hidden[mask].to(weight.dtype)  # (M, H)
    if scale != 1.0:  # logits * s = (h * s) W^T + b * s
        h, bias = h * scale, (bias * scale if bias is not None else None)
    lp = linear_token_log_probs(h, weight, targets[mask], bias)  # (M,)
    return torch.zeros(targets.shape, dtype=lp.dtype, device=lp.device).masked_scatter(mask, lp)


SCORERS: dict[str, Scorer] = {
    "logits_to_keep": _score_logits_to_keep,
    "hidden": _score_hidden,
    "full": _score_full,
}


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def score_batch_tokens(generator, batch: dict, mode: str = "logits_to_keep") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token answer log-probs for one collated, left-padded batch.

    Returns:
        token_logprobs (N, T) (0 off the answer) and targets (N, T), answers
        right-aligned so that every row's last position is its EOS.
    """
    if mode not in SCORERS:
        raise ValueError(f"scoring mode must be one of {sorted(SCORERS)}, got {mode!r}")
    batch = {k: v.to(_device(generator)) for k, v in batch.items()}
    labels = batch["labels"]
    T = int((labels != IGNORE_INDEX).sum(-1).max())
    return SCORERS[mode](generator, batch, T), labels[:, -T:]


def score_batch(generator, batch: dict, mode: str = "logits_to_keep", length_normalize: bool = False) -> torch.Tensor:
    """(N,) answer log-probs for one collated, left-padded batch."""
    token_lp, targets = score_batch_tokens(generator, batch, mode)
    return sequence_log_probs(token_lp, targets, length_normalize)


def _micro_batches(
    encoded: Sequence[EncodedPrompt], micro_batch_size: int | None
) -> tuple[list[list[int]], torch.Tensor]:
    """Length-sorted index groups and the permutation that restores input order."""
    n = len(encoded)
    if n == 0:
        raise ValueError("encoded: expected at least one (prompt, answer) sequence, got none")
    size = micro_batch_size or n
    order = sorted(range(n), key=lambda i: len(encoded[i].input_ids))
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(n)
    return [order[s : s + size] for s in range(0, n, size)], inverse


def score_sequences(
    generator,
    encoded: Sequence[EncodedPrompt],
    collate: Callable[[Sequence[EncodedPrompt]], dict],
    *,
    mode: str = "logits_to_keep",
    micro_batch_size: int | None = None,
    length_normalize: bool = False,
) -> torch.Tensor:
    """(N,) log p(answer | prompt) for every encoded sequence, in input order.

    Sequences are grouped by length into micro-batches (all at once when
    `micro_batch_size` is None), so padding stays small.
    """
    groups, inverse = _micro_batches(encoded, micro_batch_size)
    parts = [score_batch(generator, collate([encoded[i] for i in g]), mode, length_normalize) for g in groups]
    scores = torch.cat(parts)
    return scores[inverse.to(scores.device)]


def score_tokens(
    generator,
    encoded: Sequence[EncodedPrompt],
    collate: Callable[[Sequence[EncodedPrompt]], dict],
    *,
    mode: str = "logits_to_keep",
    micro_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token answer log-probs (N, T) and answer mask (N, T), right-aligned, in input order."""
    groups, inverse = _micro_batches(encoded, micro_batch_size)
    parts = [score_batch_tokens(generator, collate([encoded[i] for i in g]), mode) for g in groups]
    T = max(lp.shape[1] for lp, _ in parts)
    lps = torch.cat([torch.nn.functional.pad(lp, (T - lp.shape[1], 0)) for lp, _ in parts])
    masks = torch.cat([torch.nn.functional.pad(t != IGNORE_INDEX, (T - t.shape[1], 0)) for _, t in parts])
    inverse = inverse.to(lps.device)
    return lps[inverse], masks[inverse]
