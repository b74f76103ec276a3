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
  tensor is kept at all. Falls back to "logits_to_keep" where the head is
  quantized or the model post-processes logits.
- "full": logits and log-softmax over every position (the naive design the
  benchmarks compare against; exact but memory-hungry).

Shapes: N sequences, L padded length, T answer positions, V vocabulary, H hidden.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

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


def _plain_head(generator):
    """The LM head as (weight, bias) when it is a plain float linear layer, else None."""
    head = generator.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or not weight.is_floating_point() or type(weight) is not torch.nn.Parameter:
        return None
    config = getattr(generator, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    return weight, getattr(head, "bias", None)


def _decoder(generator):
    base = generator.get_base_model() if hasattr(generator, "get_base_model") else generator
    return base.get_decoder() if hasattr(base, "get_decoder") else None


def _score_hidden(generator, batch: dict, T: int) -> torch.Tensor:
    head, decoder = _plain_head(generator), _decoder(generator)
    if head is None or decoder is None:
        return _score_logits_to_keep(generator, batch, T)
    hidden = decoder(**_model_inputs(batch), use_cache=False).last_hidden_state  # (N, L, H)
    hidden = hidden[:, -T - 1 : -1]  # (N, T, H) positions that predict the answer
    targets = batch["labels"][:, -T:]
    mask = targets != IGNORE_INDEX
    weight, bias = head
    lp = linear_token_log_probs(hidden[mask].to(weight.dtype), weight, targets[mask], bias)  # (M,)
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


def _micro_batches(encoded: Sequence[EncodedPrompt], micro_batch_size: Optional[int]) -> tuple[list[list[int]], torch.Tensor]:
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
    micro_batch_size: Optional[int] = None,
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
    micro_batch_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token answer log-probs (N, T) and answer mask (N, T), right-aligned, in input order."""
    groups, inverse = _micro_batches(encoded, micro_batch_size)
    parts = [score_batch_tokens(generator, collate([encoded[i] for i in g]), mode) for g in groups]
    T = max(lp.shape[1] for lp, _ in parts)
    lps = torch.cat([torch.nn.functional.pad(lp, (T - lp.shape[1], 0)) for lp, _ in parts])
    masks = torch.cat([torch.nn.functional.pad(t != IGNORE_INDEX, (T - t.shape[1], 0)) for _, t in parts])
    inverse = inverse.to(lps.device)
    return lps[inverse], masks[inverse]
