"""RAG-Sequence decoding for decoder-only generators.

Boundary: turns questions into answers with sources by calling the model's
retrieval, prompt builder and generator; the marginalisation maths is in
`loss.py`. Modes (a registry, `DECODERS`):

- "thorough" (Lewis et al. 2020): generate candidates under each of the K
  passages (greedy, or beams with `num_beams`), deduplicate, rescore every
  candidate under all K passages in one batched pass, and pick the best
  log p(y|x) = logsumexp_k [log p(z_k|x) + log p(y|f(x,z_k))].
- "fast": as "thorough" but a candidate's likelihood under passages that did
  not produce it is taken as zero, so no rescoring pass is needed.
- "concat": all K passages in one prompt and a single generation (common
  practice, not RAG-Sequence); sources are weighted by the answer's posterior
  p(z_k|x,y) from one scoring pass.

Every answer's text is only the generated continuation (never the prompt),
with sources weighted by p(z_k | x, y) and a score log p(y | x).

Shapes: B questions, K passages, R returned sequences per prompt, C candidates.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .loss import posterior_doc_probs
from .scoring import score_sequences
from .types import Passage, RagAnswer


def _eos_ids(model) -> set[int]:
    ids = {model.generator_tokenizer.eos_token_id}
    configured = getattr(model.generator.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.discard(None)
    return ids


def _run_generate(model, encoded, max_new_tokens: int, **kwargs) -> tuple[list[str], torch.Tensor]:
    """Generate R continuations per prompt: texts (N*R) and their log-probs (N*R,)."""
    batch = model.prompts.collate(encoded)
    device = next(model.generator.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    tok = model.generator_tokenizer
    kwargs.setdefault("pad_token_id", tok.pad_token_id)
    kwargs.setdefault("do_sample", False)
    out = model.generator.generate(
        **inputs, max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True, **kwargs
    )
    new = out.sequences[:, inputs["input_ids"].shape[1]:]  # (N*R, new)
    beams = getattr(out, "beam_indices", None)
    trans = model.generator.compute_transition_scores(out.sequences, out.scores, beams, normalize_logits=beams is None)
    eos = torch.tensor(sorted(_eos_ids(model)), device=new.device)
    is_eos = torch.isin(new, eos)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    logp = trans.float().masked_fill(after_eos | ~torch.isfinite(trans), 0.0).sum(-1)
    texts = [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return texts, logp.cpu()


def _generate_in_chunks(model, encoded, max_new_tokens: int, kwargs) -> tuple[list[str], torch.Tensor]:
    """`_run_generate` over micro-batches of `config.micro_batch_size` prompts (all at once when None)."""
    size = model.config.micro_batch_size or len(encoded) or 1
    texts, logps = [], []
    for start in range(0, len(encoded), size):
        t, lp = _run_generate(model, encoded[start : start + size], max_new_tokens, **kwargs)
        texts += t
        logps.append(lp)
    return texts, torch.cat(logps)


def _generate_per_passage(model, questions, passages, max_new_tokens, kwargs):
    """Candidates from each (question, passage) prompt: texts[b][k] (R each) and log-probs[b][k]."""
    encoded = model.prompts.encode_batch(questions, passages)
    R = kwargs.get("num_return_sequences", 1)
    texts, logp = _generate_in_chunks(model, encoded, max_new_tokens, kwargs)
    K = len(passages[0])
    by_q = [[texts[(b * K + k) * R : (b * K + k + 1) * R] for k in range(K)] for b in range(len(questions))]
    lp_q = logp.view(len(questions), K, R)
    return by_q, lp_q


def _answer(text: str, passages: Sequence[Passage], weights: torch.Tensor, score: float) -> RagAnswer:
    order = torch.argsort(weights, descending=True).tolist()
    return RagAnswer(text=text, sources=[(passages[i], float(weights[i])) for i in order], score=float(score))


def _unique(texts_per_passage) -> list[str]:
    seen = {}
    for texts in texts_per_passage:
        for t in texts:
            if t:
                seen.setdefault(t, None)
    return list(seen)


def _thorough(model, questions, doc_lp, passages, max_new_tokens, kwargs) -> list[RagAnswer]:
    cands_by_q, _ = _generate_per_passage(model, questions, passages, max_new_tokens, kwargs)
    candidates = [_unique(c) for c in cands_by_q]
    K = doc_lp.shape[1]
    flat_q = [q for q, cs in zip(questions, candidates) for _ in cs]
    flat_p = [p for p, cs in zip(passages, candidates) for _ in cs]
    flat_a = [c for cs in candidates for c in cs]
    seq_lp = torch.empty(0, K)
    if flat_a:
        encoded = model.prompts.encode_batch(flat_q, flat_p, flat_a)
        seq_lp = score_sequences(model.generator, encoded, model.prompts.collate, mode=model.config.scoring,
                                 micro_batch_size=model.config.micro_batch_size).float().cpu().view(-1, K)
    answers, row = [], 0
    for b, cs in enumerate(candidates):
        if not cs:
            answers.append(_answer("", passages[b], doc_lp[b].exp(), float("-inf")))
            continue
        joint = doc_lp[b].unsqueeze(0) + seq_lp[row : row + len(cs)]  # (C, K)
        marginal = torch.logsumexp(joint, -1)  # (C,)
        best = int(marginal.argmax())
        weights = posterior_doc_probs(doc_lp[b], seq_lp[row + best])
        answers.append(_answer(cs[best], passages[b], weights, marginal[best]))
        row += len(cs)
    return answers


def _fast(model, questions, doc_lp, passages, max_new_tokens, kwargs) -> list[RagAnswer]:
    cands_by_q, lp_q = _generate_per_passage(model, questions, passages, max_new_tokens, kwargs)
    answers = []
    for b, per_passage in enumerate(cands_by_q):
        table: dict[str, torch.Tensor] = {}
        for k, texts in enumerate(per_passage):
            for r, text in enumerate(texts):
                if text:
                    row = table.setdefault(text, torch.full((len(per_passage),), float("-inf")))
                    row[k] = torch.maximum(row[k], lp_q[b, k, r])
        if not table:
            answers.append(_answer("", passages[b], doc_lp[b].exp(), float("-inf")))
            continue
        joint = {t: doc_lp[b] + lp for t, lp in table.items()}
        best = max(joint, key=lambda t: float(torch.logsumexp(joint[t], -1)))
        answers.append(_answer(best, passages[b], torch.softmax(joint[best], -1), torch.logsumexp(joint[best], -1)))
    return answers


def _concat(model, questions, doc_lp, passages, max_new_tokens, kwargs) -> list[RagAnswer]:
    encoded = [model.prompts.encode(q, ps) for q, ps in zip(questions, passages)]
    kwargs = {k: v for k, v in kwargs.items() if k != "num_return_sequences"}
    texts, logp = _generate_in_chunks(model, encoded, max_new_tokens, kwargs)
    scored = [b for b, t in enumerate(texts) if t]
    weights = doc_lp.exp().clone()
    if scored:
        seq_lp = model.score([questions[b] for b in scored], [passages[b] for b in scored],
                             [texts[b] for b in scored]).float().cpu()
        weights[scored] = posterior_doc_probs(doc_lp[scored], seq_lp)
    return [_answer(t, passages[b], weights[b], logp[b]) for b, t in enumerate(texts)]


Decoder = Callable[..., list[RagAnswer]]
DECODERS: dict[str, Decoder] = {"thorough": _thorough, "fast": _fast, "concat": _concat}


def rag_generate(model, questions: list[str], num_docs: int, max_new_tokens: int, decoding: str,
                 **generate_kwargs) -> list[RagAnswer]:
    """Answer `questions` with `model` (a RAGSequence) using the named decoding mode."""
    if decoding not in DECODERS:
        raise ValueError(f"decoding: expected one of {sorted(DECODERS)}, got {decoding!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    num_beams = generate_kwargs.get("num_beams", 1)
    generate_kwargs.setdefault("num_return_sequences", num_beams)
    was_training = model.training
    model.eval()
    try:
        doc_lp, retrieved = model.retrieve(questions, num_docs)
        doc_lp = doc_lp.detach().float().cpu()
        return DECODERS[decoding](model, questions, doc_lp, retrieved.passages, max_new_tokens, generate_kwargs)
    finally:
        model.train(was_training)


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


def rag_token_generate(model, questions: list[str], num_docs: int, max_new_tokens: int, *,
                       do_sample: bool = False, temperature: float = 1.0, top_k=None) -> list[RagAnswer]:
    """RAG-Token decoding: K KV caches in parallel, one shared token stream per question.

    Each step picks y_t from sum_k p(z_k|x) p(y_t | f(x,z_k), y_<t) and feeds it
    to all K streams. Sources are weighted by p(z_k | x, y) accumulated from the
    same per-passage token log-probs, so no extra pass is needed.
    """
    gen, tok = model.generator, model.generator_tokenizer
    doc_lp, retrieved = model.retrieve(questions, num_docs)
    doc_lp = doc_lp.detach().float()
    B, K = doc_lp.shape
    batch = model.prompts.collate(model.prompts.encode_batch(questions, retrieved.passages))
    device = next(gen.parameters()).device
    mask, pos = batch["attention_mask"].to(device), batch["position_ids"].to(device)
    out = gen(input_ids=batch["input_ids"].to(device), attention_mask=mask, position_ids=pos,
              use_cache=True, logits_to_keep=1)
    doc_lp = doc_lp.to(device)
    eos = torch.tensor(sorted(_eos_ids(model)), device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    per_doc = torch.zeros(B, K, device=device)  # log p(y_<=t | f(x, z_k))
    score = torch.zeros(B, device=device)
    steps = []
    for _ in range(max_new_tokens):
        lp = torch.log_softmax(out.logits[:, -1].float(), -1).view(B, K, -1)  # (B, K, V)
        mixture = torch.logsumexp(doc_lp.unsqueeze(-1) + lp, dim=1)  # (B, V)
        nxt = _next_token(mixture, do_sample, temperature, top_k).masked_fill(finished, tok.pad_token_id)
        live = (~finished).float()
        score += mixture.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) * live
        per_doc += lp.gather(-1, nxt.view(B, 1, 1).expand(B, K, 1)).squeeze(-1) * live.unsqueeze(-1)
        steps.append(nxt)
        finished |= torch.isin(nxt, eos)
        if bool(finished.all()):
            break
        mask = torch.cat([mask, mask.new_ones(B * K, 1)], -1)
        pos = pos[:, -1:] + 1
        out = gen(input_ids=nxt.repeat_interleave(K).unsqueeze(-1), attention_mask=mask, position_ids=pos,
                  use_cache=True, **_cache_kwargs(gen, out))
    ids = torch.stack(steps, -1) if steps else torch.empty(B, 0, dtype=torch.long)
    texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    weights = torch.softmax(doc_lp + per_doc, -1).cpu()
    return [_answer(t, retrieved.passages[b], weights[b], score[b]) for b, t in enumerate(texts)]
