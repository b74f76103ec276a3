"""RAG-Sequence decoding for decoder-only generators.

Boundary: turns questions into answers with sources by calling the model's
retrieval, prompt builder and generator; the marginalisation maths is in
`loss.py`. Modes (a registry, `DECODERS`):

- "thorough" (Lewis et al. 2020): generate candidates under each of the K
  passages (greedy, or beams with `num_beams`), deduplicate, rescore every
  candidate under all K passages in one batched pass, and pick the best
  log p(y|x) = logsumexp_k [log p(z_k|x) + log p(y|f(x,z_k))].
- "fast": as "thorough" but a candidate's likelihood under passages that did
  not produce it is taken as zero (log p = -inf), so each candidate is rescored
  only under its own passage (K times fewer sequences than "thorough"); with
  K = 1 the two modes agree exactly.
- "concat": all K passages in one prompt and a single generation (common
  practice, not RAG-Sequence); the score is log p(y | f(x, z_1..z_K)) and the
  sources are weighted by the answer's posterior p(z_k|x,y) from one pass of the
  answer under each passage alone (`RagConfig(source_weights="retriever")` skips
  that pass and weights them by p(z_k|x), in every mode).

Scores mean the same in every mode: log p(y|f(x,z)) is always the teacher-forced
log-likelihood of the returned text followed by EOS, exactly what `model(questions,
answers)` computes (`scoring.py`, honouring `RagConfig.scoring` and `length_normalize`).
Generation only proposes the text: its processed scores are not used, so an answer
cut by `max_new_tokens` still carries its EOS term, and sampling settings
(temperature, top-p/top-k, repetition penalty, no_repeat_ngram_size, ...) change
which text is sampled, never its score. (When the returned text re-encodes to exactly
the tokens generated, EOS included, the model's raw logits from generation are those
teacher-forcing log-probs and no scoring pass runs: `kv_cache.py`.)

Empty candidates: a continuation with no text left after its first EOS is cut,
special tokens are skipped and whitespace is stripped (e.g. the generator emits
EOS first) is never a candidate, in every mode, since an answer is non-empty
text (as in `model(questions, answers)`). A question whose candidates are all
empty gets `RagAnswer(text="", score=-inf)` with its sources weighted by the
prior p(z_k|x).

Every answer's text is only the generated continuation (never the prompt),
with sources weighted by p(z_k | x, y) (or p(z_k | x): `RagConfig.source_weights`)
and a score as above.

Shapes: B questions, K passages, R returned sequences per prompt, C candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import torch

from .kv_cache import PromptCache, kv_reuse_fallback, score_with_cache, wants_generated_logits
from .loss import posterior_doc_probs, rag_token_nll
from .prefix_cache import prefill, shared_prefix_inputs
from .types import Passage, RagAnswer
from .validation import RAG_RESERVED, as_int, check_generate_kwargs


def _eos_ids(model) -> set[int]:
    ids = {model.generator_tokenizer.eos_token_id}
    configured = getattr(model.generator.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.discard(None)
    return ids


def _first_eos_cut(model, new: torch.Tensor) -> list[list[int]]:
    """Each row of generated ids (N, new) up to, not including, its first EOS."""
    if new.shape[1] == 0:
        return [[] for _ in range(new.shape[0])]
    eos = torch.tensor(sorted(_eos_ids(model)), device=new.device)
    is_eos = torch.isin(new, eos)
    lengths = torch.where(is_eos.any(-1), is_eos.long().argmax(-1), new.shape[1]).tolist()
    return [row[:n] for row, n in zip(new.tolist(), lengths, strict=True)]


def _run_generate(model, encoded, max_new_tokens: int, cache: PromptCache | None, **kwargs) -> list[str]:
    """Generate R continuations per prompt: their texts (N*R), decoded without special tokens and stripped.

    Only the text is kept: every mode scores the returned text by teacher forcing
    (`_score_encoded`), so sampling settings choose which text is generated, not its score.
    With `cache`, the prompts' KV from this call is kept there for that scoring, and (no beams,
    within budget) the raw logits of the generated tokens, so answers `generate` produced
    exactly need no scoring pass (`kv_cache`).
    """
    batch = model.prompts.collate(encoded)
    device = next(model.generator.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    tok = model.generator_tokenizer
    kwargs.setdefault("pad_token_id", tok.pad_token_id)
    kwargs.setdefault("do_sample", False)
    if cache is not None:
        kwargs["return_dict_in_generate"] = True
        kwargs["output_logits"] = wants_generated_logits(model.generator, len(encoded), max_new_tokens, kwargs)
        inputs = shared_prefix_inputs(model.generator, inputs, kwargs) or inputs  # the common prompt frame once
    out = model.generator.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    if cache is not None:
        cache.add(out, {k: inputs[k] for k in ("input_ids", "attention_mask")})
    new = sequences[:, inputs["input_ids"].shape[1] :]  # (N*R, new)
    return [t.strip() for t in tok.batch_decode(_first_eos_cut(model, new), skip_special_tokens=True)]


def _generate_in_chunks(model, encoded, max_new_tokens: int, kwargs) -> tuple[list[str], PromptCache | None]:
    """`_run_generate` over micro-batches of `config.micro_batch_size` prompts (all at once when None).

    Returns the texts and the prompts' `PromptCache` (None when `kv_reuse_fallback` says why not).
    """
    size = model.config.micro_batch_size or len(encoded) or 1
    cache = PromptCache(encoded) if kv_reuse_fallback(model.generator, kwargs) is None else None
    texts = []
    for start in range(0, len(encoded), size):
        texts += _run_generate(model, encoded[start : start + size], max_new_tokens, cache, **kwargs)
    return texts, cache


def _generate_per_passage(model, questions, passages, max_new_tokens, kwargs):
    """Candidates from each (question, passage) prompt: texts[b][k], R each; and the prompts' cache
    (prompt b*K + k)."""
    encoded = model.prompts.encode_batch(questions, passages)
    R = kwargs.get("num_return_sequences", 1)
    texts, cache = _generate_in_chunks(model, encoded, max_new_tokens, kwargs)
    K = len(passages[0])
    return [[texts[(b * K + k) * R : (b * K + k + 1) * R] for k in range(K)] for b in range(len(questions))], cache


def _score_encoded(model, encoded, cache: PromptCache | None = None, prompts=()) -> torch.Tensor:
    """(N,) log p(answer + EOS | prompt) by teacher forcing, as `model.score` computes it (float32, CPU).

    With `cache`, pair i is scored on the KV of cached prompt `prompts[i]` (only its answer tokens run).
    """
    if not encoded:
        return torch.empty(0)
    return score_with_cache(
        model.generator,
        cache,
        prompts,
        encoded,
        model.prompts.collate,
        mode=model.config.scoring,
        micro_batch_size=model.config.micro_batch_size,
        length_normalize=model.config.length_normalize,
    )


def _weights(model, doc_lp: torch.Tensor, posterior: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The sources' weights as `RagConfig.source_weights` asks: p(z|x,y) (`posterior()`) or p(z|x)."""
    return doc_lp.exp() if model.config.source_weights == "retriever" else posterior()


def _answer(text: str, passages: Sequence[Passage], weights: torch.Tensor, score: float | torch.Tensor) -> RagAnswer:
    order = torch.argsort(weights, descending=True).tolist()
    return RagAnswer(text=text, sources=[(passages[i], float(weights[i])) for i in order], score=float(score))


def _no_answer(passages: Sequence[Passage], doc_lp: torch.Tensor) -> RagAnswer:
    """The empty-candidate rule's answer when no candidate has text: "", score -inf, sources by p(z|x)."""
    return _answer("", passages, doc_lp.exp(), float("-inf"))


def _unique(texts_per_passage) -> list[str]:
    """Non-empty candidate texts in order of appearance (empty ones are never candidates)."""
    seen: dict[str, None] = {}
    for texts in texts_per_passage:
        for t in texts:
            if t:
                seen.setdefault(t, None)
    return list(seen)


def _thorough(model, questions, doc_lp, passages, max_new_tokens, kwargs) -> list[RagAnswer]:
    cands_by_q, cache = _generate_per_passage(model, questions, passages, max_new_tokens, kwargs)
    candidates = [_unique(c) for c in cands_by_q]
    K = doc_lp.shape[1]
    flat_q = [q for q, cs in zip(questions, candidates, strict=True) for _ in cs]
    flat_p = [p for p, cs in zip(passages, candidates, strict=True) for _ in cs]
    flat_a = [c for cs in candidates for c in cs]
    encoded = model.prompts.encode_batch(flat_q, flat_p, flat_a) if flat_a else []
    prompts = [b * K + k for b, cs in enumerate(candidates) for _ in cs for k in range(K)]
    seq_lp = _score_encoded(model, encoded, cache, prompts).view(-1, K)  # (C, K) over all questions' candidates
    answers, row = [], 0
    for b, cs in enumerate(candidates):
        if not cs:
            answers.append(_no_answer(passages[b], doc_lp[b]))
            continue
        joint = doc_lp[b].unsqueeze(0) + seq_lp[row : row + len(cs)]  # (C, K)
        marginal = torch.logsumexp(joint, -1)  # (C,)
        best = int(marginal.argmax())
        weights = _weights(model, doc_lp[b], partial(posterior_doc_probs, doc_lp[b], seq_lp[row + best]))
        answers.append(_answer(cs[best], passages[b], weights, marginal[best]))
        row += len(cs)
    return answers


def _fast(model, questions, doc_lp, passages, max_new_tokens, kwargs) -> list[RagAnswer]:
    cands_by_q, cache = _generate_per_passage(model, questions, passages, max_new_tokens, kwargs)
    K = doc_lp.shape[1]
    pairs = [
        [(k, t) for k, texts in enumerate(per_passage) for t in dict.fromkeys(texts) if t] for per_passage in cands_by_q
    ]  # (passage that produced it, text), deduplicated
    encoded = (
        model.prompts.encode_batch(
            [q for q, ps in zip(questions, pairs, strict=True) for _ in ps],
            [[passages[b][k]] for b, ps in enumerate(pairs) for k, _ in ps],
            [t for ps in pairs for _, t in ps],
        )
        if any(pairs)
        else []
    )
    prompts = [b * K + k for b, ps in enumerate(pairs) for k, _ in ps]
    seq_lp = _score_encoded(model, encoded, cache, prompts)  # (P,) each text under its own passage only
    answers, i = [], 0
    for b, ps in enumerate(pairs):
        table: dict[str, torch.Tensor] = {}
        for k, text in ps:
            table.setdefault(text, torch.full((K,), float("-inf")))[k] = seq_lp[i]
            i += 1
        if not table:
            answers.append(_no_answer(passages[b], doc_lp[b]))
            continue
        joint = {t: doc_lp[b] + lp for t, lp in table.items()}  # other passages: log p = -inf
        best = max(joint, key=lambda t: float(torch.logsumexp(joint[t], -1)))
        weights = _weights(model, doc_lp[b], partial(torch.softmax, joint[best], -1))
        answers.append(_answer(best, passages[b], weights, torch.logsumexp(joint[best], -1)))
    return answers


def _concat(model, questions, doc_lp, passages, max_new_tokens, kwargs) -> list[RagAnswer]:
    encoded = [model.prompts.encode(q, ps) for q, ps in zip(questions, passages, strict=True)]
    kwargs = {k: v for k, v in kwargs.items() if k != "num_return_sequences"}
    texts, cache = _generate_in_chunks(model, encoded, max_new_tokens, kwargs)
    scored = [b for b, t in enumerate(texts) if t]
    K = doc_lp.shape[1]
    together = [model.prompts.encode(questions[b], passages[b], texts[b]) for b in scored]
    concat_lp = _score_encoded(model, together, cache, scored)  # (S,) on the joint prompt's cache
    if model.config.source_weights == "retriever" or not scored:
        seq_lp = None  # no per-passage pass: the sources are weighted by p(z|x)
    else:  # each passage alone, for the weights p(z|x,y)
        per_passage = model.prompts.encode_batch(
            [questions[b] for b in scored], [passages[b] for b in scored], [texts[b] for b in scored]
        )
        prompts = None  # prompt KV prefilled (frame shared) when the model's caches are reusable, as generation's
        if cache is not None and cache.usable:
            prompt_only = [
                replace(e, input_ids=e.input_ids[: e.prompt_length], labels=e.labels[: e.prompt_length])
                for e in per_passage
            ]  # each pair's own prompt (as cut for its answer), not re-tokenised
            prompts = prefill(model.generator, prompt_only, model.prompts.collate, model.config.micro_batch_size)
        seq_lp = _score_encoded(model, per_passage, prompts, range(len(per_passage))).view(-1, K)  # (S, K)
    answers = [_no_answer(passages[b], doc_lp[b]) for b in range(len(texts))]
    for i, b in enumerate(scored):
        weights = doc_lp[b].exp() if seq_lp is None else posterior_doc_probs(doc_lp[b], seq_lp[i])
        answers[b] = _answer(texts[b], passages[b], weights, concat_lp[i])
    return answers


Decoder = Callable[..., list[RagAnswer]]
DECODERS: dict[str, Decoder] = {"thorough": _thorough, "fast": _fast, "concat": _concat}


def rag_generate(
    model, questions: list[str], num_docs: int, max_new_tokens: int, decoding: str, **generate_kwargs
) -> list[RagAnswer]:
    """Answer `questions` with `model` (a RAGSequence) using the named decoding mode."""
    if decoding not in DECODERS:
        raise ValueError(f"decoding: expected one of {sorted(DECODERS)}, got {decoding!r}")
    max_new_tokens = as_int("max_new_tokens", max_new_tokens)  # numpy ints too; "16" refused
    generate_kwargs = check_generate_kwargs(generate_kwargs, owner="generate", reserved=RAG_RESERVED)
    num_beams = generate_kwargs.get("num_beams", 1)
    generate_kwargs.setdefault("num_return_sequences", num_beams)
    with model.inference():  # locks held, eval mode, every sub-module's own mode restored after
        doc_lp, retrieved = model.retrieve(questions, num_docs)
        doc_lp = doc_lp.detach().float().cpu()
        return DECODERS[decoding](model, questions, doc_lp, retrieved.passages, max_new_tokens, generate_kwargs)


# -- RAG-Token ----------------------------------------------------------------
def _next_token(mixture: torch.Tensor, do_sample: bool, temperature: float, top_k) -> torch.Tensor:
    """Pick one token per question from the (B, V) mixture log-probs."""
    if not do_sample:
        return mixture.argmax(-1)
    logits = mixture / max(temperature, 1e-6)
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)


def _cache_kwargs(generator, output) -> dict:
    """The KV cache of `output` as the keyword this transformers version takes
    (`cache` from 5.x, `past_key_values` before)."""
    import inspect

    cache = output.get("cache", None) if hasattr(output, "get") else None
    if cache is not None and "cache" in inspect.signature(generator.forward).parameters:
        return {"cache": cache}
    return {"past_key_values": output.past_key_values}


def rag_token_generate(
    model,
    questions: list[str],
    num_docs: int,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k=None,
) -> list[RagAnswer]:
    """RAG-Token decoding: K KV caches in parallel, one shared token stream per question.

    Each step picks y_t from sum_k p(z_k|x) p(y_t | f(x,z_k), y_<t) and feeds it
    to all K streams. The returned text is then scored as in RAG-Sequence decoding
    (module docstring): its RAG-Token log p(y|x) with EOS by teacher forcing, sources
    weighted by p(z_k | x, y); an empty text scores -inf with sources by p(z|x).
    """
    gen, tok = model.generator, model.generator_tokenizer
    doc_lp, retrieved = model.retrieve(questions, num_docs)
    doc_lp = doc_lp.detach().float()
    B, K = doc_lp.shape
    batch = model.prompts.collate(model.prompts.encode_batch(questions, retrieved.passages))
    device = next(gen.parameters()).device
    mask, pos = batch["attention_mask"].to(device), batch["position_ids"].to(device)
    out = gen(
        input_ids=batch["input_ids"].to(device), attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
    )
    doc_lp = doc_lp.to(device)
    eos = torch.tensor(sorted(_eos_ids(model)), device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    steps = []
    for _ in range(max_new_tokens):
        lp = torch.log_softmax(out.logits[:, -1].float(), -1).view(B, K, -1)  # (B, K, V)
        mixture = torch.logsumexp(doc_lp.unsqueeze(-1) + lp, dim=1)  # (B, V)
        nxt = _next_token(mixture, do_sample, temperature, top_k).masked_fill(finished, tok.pad_token_id)
        steps.append(nxt)
        finished |= torch.isin(nxt, eos)
        if bool(finished.all()):
            break
        mask = torch.cat([mask, mask.new_ones(B * K, 1)], -1)
        pos = pos[:, -1:] + 1
        out = gen(
            input_ids=nxt.repeat_interleave(K).unsqueeze(-1),
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **_cache_kwargs(gen, out),
        )
    ids = torch.stack(steps, -1) if steps else torch.empty(B, 0, dtype=torch.long, device=device)
    texts = [t.strip() for t in tok.batch_decode(_first_eos_cut(model, ids), skip_special_tokens=True)]
    return _token_answers(model, questions, doc_lp.cpu(), retrieved.passages, texts)


def _token_answers(model, questions, doc_lp, passages, texts) -> list[RagAnswer]:
    """RAG-Token answers: each non-empty text rescored by teacher forcing (EOS included)."""
    scored = [b for b, t in enumerate(texts) if t]
    answers = [_no_answer(passages[b], doc_lp[b]) for b in range(len(texts))]
    if not scored:
        return answers
    token_lp, mask = model.score_tokens(
        [questions[b] for b in scored], [passages[b] for b in scored], [texts[b] for b in scored]
    )  # (S, K, T), (S, T)
    token_lp, mask, prior = token_lp.float().cpu(), mask.cpu(), doc_lp[scored]
    scores = -rag_token_nll(prior, token_lp, mask, reduction="none")  # (S,)
    weights = _weights(model, prior, partial(posterior_doc_probs, prior, token_lp.sum(-1)))  # (S, K)
    for i, b in enumerate(scored):
        answers[b] = _answer(texts[b], passages[b], weights[i], scores[i])
    return answers
