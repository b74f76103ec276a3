"""Prompt KV reuse: score answers on the keys and values `generate` already computed for their prompts.

Boundary: a helper of `generation.py`. It keeps the prompt part of the KV cache that
HF `generate` returns and scores (prompt, answer) pairs on it, computing only the
answer tokens; it knows nothing of retrieval or marginalisation.

How: every prompt of a `generate` call is cached without its last token (left-padded,
as generated). To score an answer under prompt i, the rows of prompt i are gathered
(several answers may share one prompt: the cache is expanded per answer), and the
generator is fed the prompt's last token followed by the answer ids, right-padded,
with explicit attention mask and position ids. The logits at those T positions
predict the answer and its EOS, exactly the positions `scoring.py` keeps, so the
scores equal the uncached path's (`score_sequences`) up to float rounding.

Generated answers need no pass at all: with greedy or sampled decoding (no beams),
`generate` is also asked for its raw logits (`output_logits`), and each generated row's
token log-probs are kept. A pair whose answer ids (with the EOS scoring appends) are
exactly what `generate` produced for its prompt is scored from those, the same
log-softmax at the same positions (KV cached during generation instead of in one pass);
every other pair (another passage's candidate in "thorough", a text cut by
`max_new_tokens`, a re-tokenisation that differs) runs on the cache as above. The
logits are only asked for when they fit `GENERATED_LOGITS_BUDGET` bytes.

Exact or not taken: a pair is scored on the cache only when its prompt ids (with the
answer's length budget applied) are the generated prompt's ids, the cache is a plain
full-attention `DynamicCache` and no prompt-learning adapter adds virtual tokens.
Anything else is scored by `score_sequences` from scratch; `kv_reuse_fallback`
says why for a generator, and `uncached()` turns reuse off (tests, debugging).

Shapes: N pairs, P cached prompt length, T answer positions (answer ids + EOS),
H heads, D head size.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from .loss import (
    IGNORE_INDEX,
    linear_token_log_probs,
    sequence_log_probs,
    token_log_probs,
)
from .prompts import EncodedPrompt
from .scoring import _base_model, _lean_head, score_sequences

__all__ = ["GENERATED_LOGITS_BUDGET", "PromptCache", "kv_reuse_fallback", "score_with_cache", "uncached"]

#: Most bytes of raw logits (rows x new tokens x vocabulary) a `generate` call may return for scoring.
GENERATED_LOGITS_BUDGET = 256 * 2**20

_ENABLED: ContextVar[bool] = ContextVar("contextflow_kv_reuse", default=True)
_USER_CACHE_KWARGS = (
    "past_key_values",
    "cache",
    "use_cache",
    "cache_implementation",
    "cache_config",
    "prompt_lookup_num_tokens",
    "assistant_model",
    "penalty_alpha",
    "custom_generate",
)


@contextmanager
def uncached() -> Iterator[None]:
    """Decode without any reuse inside this block, in this thread/task: candidates scored from scratch.

    Turns off the prompt KV reuse, the scores taken from generation's logits and the shared
    prompt prefix (`prefix_cache`): the reference path, for tests and debugging.

    Example:
        >>> with uncached():  # doctest: +SKIP
        ...     reference = rag.generate(questions=qs, decoding="thorough")
    """
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def kv_reuse_fallback(generator, generate_kwargs: dict | None = None) -> str | None:
    """Why decoding would score candidates without the prompt KV cache; None when it reuses it.

    Args:
        generator: The causal LM.
        generate_kwargs: The keyword arguments passed on to HF `generate`.
    """
    if not _ENABLED.get():
        return "prompt KV reuse is turned off (kv_cache.uncached())"
    peft_config = getattr(generator, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return "a prompt-learning PEFT adapter adds virtual tokens to the cache"
    if getattr(getattr(generator, "config", None), "is_encoder_decoder", False):
        return "an encoder-decoder generator caches cross-attention"
    user = sorted(k for k in (generate_kwargs or {}) if k in _USER_CACHE_KWARGS)
    if user:
        return f"generate keyword(s) {user} set the cache or the decoding loop"
    if "cache" not in _forward_params(generator) and "past_key_values" not in _forward_params(generator):
        return f"{type(_base_model(generator)).__name__}.forward takes no cache"
    return None


def num_beams(generator, generate_kwargs: dict) -> int:
    """The beams a `generate` call runs: its own `num_beams`, else the generator's generation config's."""
    beams = generate_kwargs.get("num_beams") or getattr(getattr(generator, "generation_config", None), "num_beams", 1)
    return beams or 1


def cache_keyword(generator) -> str:
    """The forward keyword that takes a KV cache: `cache` from transformers 5, `past_key_values` before."""
    return "cache" if "cache" in _forward_params(generator) else "past_key_values"


def wants_generated_logits(generator, rows: int, max_new_tokens: int, generate_kwargs: dict) -> bool:
    """Whether a `generate` call of `rows` prompts should return its raw logits for scoring (no beams, in budget)."""
    if num_beams(generator, generate_kwargs) > 1:
        return False  # beam rows are reordered at every step: their logits do not follow the returned sequences
    vocab = getattr(getattr(generator, "config", None), "vocab_size", None)
    if not vocab and hasattr(generator, "get_output_embeddings"):
        vocab = generator.get_output_embeddings().weight.shape[0]
    size = rows * generate_kwargs.get("num_return_sequences", 1) * max_new_tokens * (vocab or 0) * 4  # float32
    return 0 < size <= GENERATED_LOGITS_BUDGET


def _generated_log_probs(output, new: torch.Tensor) -> torch.Tensor | None:
    """(rows, steps) log p of each generated token from `generate`'s raw logits; None without them."""
    logits = getattr(output, "logits", None)
    if not logits or new.shape[1] == 0:
        return None
    steps = min(len(logits), new.shape[1])
    return torch.cat([token_log_probs(logits[t].unsqueeze(1), new[:, t : t + 1]) for t in range(steps)], -1).cpu()


def _forward_params(generator) -> frozenset:
    return frozenset(inspect.signature(_base_model(generator).forward).parameters)


def _cache_of(output):
    """The cache object of a `generate` output (`cache` from transformers 5, `past_key_values` before)."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def _layer_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """[(keys, values)] per layer, each (rows, H, S, D), when `cache` is a plain full-attention dynamic cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        if not layers or any(
            type(layer).__name__ != "DynamicLayer" or not getattr(layer, "is_initialized", True) for layer in layers
        ):
            return None
        return [(layer.keys, layer.values) for layer in layers]
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)  # transformers 4.x
    if type(cache).__name__ != "DynamicCache" or not keys or values is None or len(keys) != len(values):
        return None
    return list(zip(keys, values, strict=True))


@dataclass
class _Chunk:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (n, H, P, D): prompt without its last token
    mask: torch.Tensor  # (n, P) attention mask of those positions
    last_token: torch.Tensor  # (n,) the prompt's last token
    last_position: torch.Tensor  # (n,) its position id


class PromptCache:
    """The prompt KV of one decoding call's `generate` batches, addressed by prompt index.

    Args:
        prompts: The encoded prompts in generation order (prompt index = list index).
    """

    def __init__(self, prompts: Sequence[EncodedPrompt]) -> None:
        self.prompts = list(prompts)
        self._chunks: list[_Chunk] = []
        self._where: list[tuple[int, int]] = []  # prompt index -> (chunk, row)
        self._generated: dict[int, list[tuple[list[int], torch.Tensor]]] = {}  # prompt -> [(ids, token log-probs)]
        self.reason: str | None = None  # why the cache is unusable (None: usable)

    @property
    def usable(self) -> bool:
        """Whether every prompt's KV has been kept."""
        return self.reason is None and len(self._where) == len(self.prompts)

    def add(self, output, batch: dict) -> None:
        """Keep the prompt part of a `generate` output's cache for the next `len(batch["input_ids"])` prompts.

        Args:
            output: The `generate` output (with `return_dict_in_generate=True`).
            batch: The collated prompts it was generated from (input_ids, attention_mask (n, L)).
        """
        if self.reason is not None:
            return
        layers = _layer_tensors(_cache_of(output))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        n, L = ids.shape
        if layers is None:
            self.reason = "generate returned no plain full-attention DynamicCache (sliding window, static or quantized)"
            return
        rows = layers[0][0].shape[0]
        if rows % n or layers[0][0].shape[-2] < L - 1:
            self.reason = f"the cache holds {rows} rows of {layers[0][0].shape[-2]} tokens for {n} prompts of {L}"
            return
        every = rows // n  # beams / returned sequences: the prompt part of a prompt's rows is the same
        layers = [(k[::every, :, : L - 1], v[::every, :, : L - 1]) for k, v in layers]
        chunk = _Chunk(layers, mask[:, : L - 1], ids[:, -1], mask.sum(-1) - 1)
        sequences = getattr(output, "sequences", None)
        if sequences is not None:
            new = sequences[:, L:]
            token_lp = _generated_log_probs(output, new)
            if token_lp is not None and token_lp.shape[0] == rows:
                for r, (row_ids, row_lp) in enumerate(zip(new[:, : token_lp.shape[1]].tolist(), token_lp, strict=True)):
                    self._generated.setdefault(len(self._where) + r // every, []).append((row_ids, row_lp))
        self._where += [(len(self._chunks), r) for r in range(n)]
        self._chunks.append(chunk)

    def generated(self, index: int, answer: Sequence[int]) -> torch.Tensor | None:
        """(T,) token log-probs of `answer` (ids + EOS) when `generate` produced exactly it for prompt `index`."""
        T = len(answer)
        for row_ids, row_lp in self._generated.get(index, ()):
            if len(row_ids) >= T and row_ids[:T] == list(answer):
                return row_lp[:T]
        return None

    def chunk_of(self, index: int) -> int:
        """The `generate` batch prompt `index` was generated in."""
        return self._where[index][0]

    def matches(self, index: int, encoded: EncodedPrompt) -> bool:
        """Whether `encoded` (prompt + answer) starts with exactly the cached prompt `index`."""
        prompt = self.prompts[index].input_ids
        return encoded.prompt_length == len(prompt) and encoded.input_ids[: len(prompt)] == prompt

    def gather(self, indices: Sequence[int]) -> _Chunk:
        """The cached rows of prompts `indices`, in that order, left-padded to one length."""
        picked = [self._where[i] for i in indices]
        P = max(self._chunks[c].mask.shape[1] for c, _ in picked)
        groups: dict[int, list[int]] = {}
        for pos, (c, _row) in enumerate(picked):
            groups.setdefault(c, []).append(pos)
        parts, order = [], []
        for c, positions in groups.items():
            chunk = self._chunks[c]
            rows = torch.tensor([picked[p][1] for p in positions], device=chunk.mask.device)
            parts.append((chunk, rows, P - chunk.mask.shape[1]))
            order += positions
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))

        def take(get, pad_value=0):
            pieces = []
            for chunk, rows, pad in parts:
                t = get(chunk).index_select(0, rows)
                if pad and t.dim() > 1:  # (n, P) masks, (n, H, P, D) keys/values: pad P on the left
                    t = torch.nn.functional.pad(t, (pad, 0) if t.dim() == 2 else (0, 0, pad, 0), value=pad_value)
                pieces.append(t)
            out = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            return out if len(parts) == 1 else out.index_select(0, inverse.to(out.device))

        layers = [
            (take(lambda ch, i=i: ch.layers[i][0]), take(lambda ch, i=i: ch.layers[i][1]))
            for i in range(len(self._chunks[picked[0][0]].layers))
        ]
        return _Chunk(
            layers, take(lambda ch: ch.mask), take(lambda ch: ch.last_token), take(lambda ch: ch.last_position)
        )


def _new_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    return DynamicCache(layers)  # first parameter: per-layer (keys, values), in transformers 4.5x and 5.x


def _answer_rows(got: _Chunk, answers: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Inputs (N, T): last prompt token + answer ids without the final EOS, right-padded; targets, mask, positions."""
    n, T = len(answers), max(len(a) for a in answers)
    inputs = torch.full((n, T), pad_id, dtype=torch.long)
    targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
    new_mask = torch.zeros((n, T), dtype=got.mask.dtype)
    for i, ids in enumerate(answers):
        inputs[i, 1 : len(ids)] = torch.tensor(ids[:-1], dtype=torch.long)
        targets[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        new_mask[i, : len(ids)] = 1
    device = got.mask.device
    inputs[:, 0] = got.last_token.cpu()
    positions = got.last_position.unsqueeze(-1).to(device) + torch.arange(T, device=device)
    return inputs.to(device), targets.to(device), torch.cat([got.mask, new_mask.to(device)], -1), positions


def _token_log_probs(generator, inputs: dict, targets: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, T) log-probs of `targets` from a forward on the cache, by the `scoring.py` mode's head computation."""
    head = None
    if mode == "hidden":
        head, reason = _lean_head(generator)
        if head is None:
            warnings.warn(
                f"scoring='hidden': {reason}; scoring with 'logits_to_keep' instead (exact, keeps the "
                "answer positions' logits). Set RagConfig(scoring='logits_to_keep') to silence this.",
                stacklevel=3,
            )
    if head is None:
        return token_log_probs(generator(**inputs).logits, targets)
    weight, bias, scale = head
    hidden = _base_model(generator).get_decoder()(**inputs).last_hidden_state  # (N, T, H)
    mask = targets != IGNORE_INDEX
    h = hidden[mask].to(weight.dtype)
    if scale != 1.0:
        h, bias = h * scale, (bias * scale if bias is not None else None)
    lp = linear_token_log_probs(h, weight, targets[mask], bias)
    return torch.zeros(targets.shape, dtype=lp.dtype, device=lp.device).masked_scatter(mask, lp)


def _score_group(
    generator,
    cache: PromptCache,
    indices: Sequence[int],
    answers: Sequence[list[int]],
    mode: str,
    length_normalize: bool,
    pad_id: int,
) -> torch.Tensor:
    """(N,) log p(answer + EOS | cached prompt) for one micro-batch."""
    got = cache.gather(indices)
    input_ids, targets, mask, positions = _answer_rows(got, answers, pad_id)
    name = cache_keyword(generator)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": positions,
        "use_cache": True,
        name: _new_cache(got.layers),
    }
    return sequence_log_probs(_token_log_probs(generator, inputs, targets, mode), targets, length_normalize)


def score_with_cache(
    generator,
    cache: PromptCache | None,
    indices: Sequence[int],
    encoded: Sequence[EncodedPrompt],
    collate,
    *,
    mode: str = "logits_to_keep",
    micro_batch_size: int | None = None,
    length_normalize: bool = False,
) -> torch.Tensor:
    """(N,) float32 CPU log p(answer + EOS | prompt) of each encoded pair, the answer under cached prompt `indices[i]`.

    Pairs whose prompt is not the cached one (cut differently for the answer's length budget),
    or all pairs when `cache` is None or unusable, are scored from scratch by `score_sequences`.

    Args:
        generator: The causal LM the cache came from.
        cache: The decoding call's `PromptCache`, or None.
        indices: For each pair, the prompt index in `cache`.
        encoded: The (prompt, answer) pairs, as `PromptBuilder.encode_batch` returns them.
        collate: `PromptBuilder.collate`, for the pairs scored from scratch.
        mode, micro_batch_size, length_normalize: As `score_sequences`.
    """
    out = torch.empty(len(encoded), dtype=torch.float32)
    on_cache = [
        i for i in range(len(encoded)) if cache is not None and cache.usable and cache.matches(indices[i], encoded[i])
    ]
    fresh = sorted(set(range(len(encoded))) - set(on_cache))
    if cache is not None and on_cache:  # answers `generate` produced: scored from its own logits, no pass
        done = []
        for i in on_cache:
            token_lp = cache.generated(indices[i], encoded[i].input_ids[encoded[i].prompt_length :])
            if token_lp is not None:
                out[i] = token_lp.sum() / (len(token_lp) if length_normalize else 1)  # as `sequence_log_probs`
                done.append(i)
        on_cache = [i for i in on_cache if i not in set(done)]
    if fresh:
        out[fresh] = (
            score_sequences(
                generator,
                [encoded[i] for i in fresh],
                collate,
                mode=mode,
                micro_batch_size=micro_batch_size,
                length_normalize=length_normalize,
            )
            .float()
            .cpu()
        )
    if on_cache and cache is not None:  # (on_cache is empty without a cache)
        pad_id = encoded[0].input_ids[-1]  # any real id: padded positions are masked and their targets ignored
        on_cache.sort(key=lambda i: (cache.chunk_of(indices[i]), len(encoded[i].input_ids) - encoded[i].prompt_length))
        size = micro_batch_size or len(on_cache)
        for s in range(0, len(on_cache), size):
            group = on_cache[s : s + size]
            answers = [encoded[i].input_ids[encoded[i].prompt_length :] for i in group]
            out[group] = (
                _score_group(generator, cache, [indices[i] for i in group], answers, mode, length_normalize, pad_id)
                .float()
                .cpu()
            )
    return out
