"""Shared prompt prefix: the token prefix every prompt of a `generate` call starts with is prefilled once.

Boundary: a helper of `generation.py` (it rearranges one `generate` call's inputs; it
knows nothing of retrieval or scoring).

Every prompt ContextFlow builds starts with the same frame (system message, chat
markers, instruction) before its passage and question: about 30 of SmolLM2's ~78 prompt
tokens. Plain left-padded generation computes that frame's keys and values once per
row. Here the rows' longest common token prefix is run once (one row), its cache is
expanded to every row, and `generate` continues from it with each row laid out as
``[prefix][padding][rest of the prompt]``: the attention mask hides the padding and the
position ids (the mask's cumulative sum, as `generate` makes them) give every token the
position it has in the unpadded prompt, so the computation is the unpadded prompt's,
exactly (float rounding aside), and the returned cache has the usual layout for
`kv_cache.PromptCache`.

Taken only when it is exact and simple: at least two prompts, one sequence per prompt
(no beams, no `num_return_sequences`, whose expansion would have to follow the cache),
no `streamer` (it is shown the prompts as `generate` gets them: a trace or a console
would see the rearranged rows), no `cache_implementation` in the generator's generation
config, a forward that takes `position_ids` (so `generate` derives them from the mask),
a plain dynamic cache, and the caller's
`kv_reuse_fallback` found nothing against it.
"""

from __future__ import annotations

import torch

from .kv_cache import PromptCache, _cache_of, _forward_params, _layer_tensors, _new_cache, cache_keyword, num_beams
from .scoring import _base_model

__all__ = ["MIN_SHARED_PREFIX", "prefill", "shared_prefix_inputs"]

#: Fewest common prompt tokens worth a separate prefix pass.
MIN_SHARED_PREFIX = 4


def _common_prefix(rows: list[torch.Tensor]) -> int:
    """Length of the longest token prefix all `rows` share."""
    n = min(len(r) for r in rows)
    first = rows[0][:n]
    for r in rows[1:]:
        differ = (r[:n] != first[:n]).nonzero()
        if len(differ):
            n = int(differ[0, 0])
    return n


def shared_prefix_inputs(generator, inputs: dict, generate_kwargs: dict) -> dict | None:
    """`generate` inputs that start from the prompts' common prefix, prefilled once; None when not taken.

    Args:
        generator: The causal LM.
        inputs: ``input_ids`` and ``attention_mask`` (n, L), left-padded.
        generate_kwargs: The keyword arguments bound for `generate`.

    Returns:
        ``input_ids``, ``attention_mask`` (n, L) laid out ``[prefix][padding][rest]`` and the
        prefix's cache under the keyword this transformers version takes.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n, L = ids.shape
    if n < 2 or num_beams(generator, generate_kwargs) > 1 or (generate_kwargs.get("num_return_sequences") or 1) > 1:
        return None
    if generate_kwargs.get("streamer") is not None:
        return None
    if getattr(getattr(generator, "generation_config", None), "cache_implementation", None) is not None:
        return None  # the model asks generate for a cache of its own kind (static, hybrid, ...)
    if "position_ids" not in _forward_params(generator):
        return None  # positions would follow the padded columns, not the mask (ALiBi models, ...)
    lengths = mask.sum(-1).tolist()
    rows = [ids[i, L - lengths[i] :] for i in range(n)]
    h = min(_common_prefix(rows), min(lengths) - 1)  # every row keeps a token to predict from
    if h < MIN_SHARED_PREFIX:
        return None
    decoder = _base_model(generator).get_decoder()
    with torch.no_grad():
        out = decoder(input_ids=rows[0][:h].unsqueeze(0), use_cache=True)
    layers = _layer_tensors(_cache_of(out))
    if layers is None:
        return None
    new_ids = torch.full_like(ids, int(ids[0, -1]))  # any real id: masked positions are never attended to
    new_mask = torch.zeros_like(mask)
    new_ids[:, :h], new_mask[:, :h] = rows[0][:h], 1
    for i, row in enumerate(rows):
        rest = row[h:]
        new_ids[i, L - len(rest) :], new_mask[i, L - len(rest) :] = rest, 1
    expanded = [(k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous()) for k, v in layers]
    cache = _new_cache(expanded)
    return {"input_ids": new_ids, "attention_mask": new_mask, cache_keyword(generator): cache}


def prefill(generator, encoded, collate, micro_batch_size: int | None = None) -> PromptCache | None:
    """The KV of `encoded` prompts as a `PromptCache`, from forward passes alone (no generation); None if unusable.

    For answers to be scored on prompts no `generate` call ran (concat's per-passage weights): the
    decoder body runs each micro-batch once, the common prefix shared as in `shared_prefix_inputs`, with
    no LM head. None when the cache it returns cannot be reused (then score from scratch).

    Args:
        generator: The causal LM.
        encoded: The prompts (`EncodedPrompt`, no answer).
        collate: `PromptBuilder.collate`.
        micro_batch_size: Prompts per forward; None: all at once.
    """
    cache = PromptCache(encoded)
    decoder = _base_model(generator).get_decoder()
    device = next(generator.parameters()).device
    name = cache_keyword(generator)
    size = micro_batch_size or len(encoded) or 1
    for start in range(0, len(encoded), size):
        batch = collate(encoded[start : start + size])
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        shared = shared_prefix_inputs(generator, inputs, {})
        if shared is None:
            run = {**inputs, "position_ids": batch["position_ids"].to(device)}
        else:
            inputs = {k: shared[k] for k in ("input_ids", "attention_mask")}
            h = shared[name].get_seq_length()
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            run = {
                "input_ids": inputs["input_ids"][:, h:],
                "attention_mask": inputs["attention_mask"],
                "position_ids": positions[:, h:],
                name: shared[name],
            }
        with torch.no_grad():
            out = decoder(**run, use_cache=True)
        cache.add(out, inputs)
        if cache.reason is not None:
            return None
    return cache
