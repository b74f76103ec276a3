"""One RAG-Sequence answer, step by step, for the adapters' traces.

Boundary: framework-agnostic (no LangChain or LlamaIndex import); the adapters turn
these steps into LangChain runs or LlamaIndex events and spans.

- `retrieve` finds the K passages of each question with their prior p(z|x) (the
  weights the marginalisation starts from) and index scores q . d.
- `generate_recording` calls `RAGSequence.generate` and records each *decoding pass*,
  i.e. each HF ``generate`` call the decoding mode makes: the rendered prompts f(x, z_k)
  (or the one "concat" prompt holding all K passages) and the text generated from each,
  through a transformers streamer, so a trace shows what the generator really saw and
  said. `on_pass` is called as a pass starts, so a trace's LLM step starts when the
  generator does.

Passes cannot be recorded when decoding uses beams (HF streams only single-beam
decoding), when the caller passes its own `streamer` to a mode that is not "concat", or
for a decoding mode not in `ROWS_PER_QUESTION`. Then one pass is built after decoding
from the retrieved passages (the prompts each question's answer came from) with the
final answer as every row's output, marked ``captured=False``.

The retrieval here runs the question encoder once more than `generate` alone would
(generate retrieves again, deterministically, in eval mode): the adapters call it only
when a trace is being recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from contextflow_core.types import Passage, RagAnswer

__all__ = ["DecodingPass", "Retrieval", "ROWS_PER_QUESTION", "generate_recording", "retrieve"]

#: Rows one question contributes to a decoding pass, per decoding mode: (K, R) -> rows,
#: with R the sequences returned per prompt. A (question, passage) row is one prompt f(x, z_k).
ROWS_PER_QUESTION: dict[str, Callable[[int, int], int]] = {
    "thorough": lambda k, r: k * r,
    "fast": lambda k, r: k * r,
    "concat": lambda k, r: 1,
}


@dataclass
class Retrieval:
    """The K passages of each question, as `RAGSequence.generate` will use them.

    Attributes:
        questions: The B questions.
        passages: (B, K) passages, best first.
        priors: (B, K) prior weights p(z_k|x) = softmax(q . d / tau) over the K.
        scores: (B, K) inner products q . d_k the index ranked by.
    """

    questions: list[str]
    passages: list[list[Passage]]
    priors: list[list[float]]
    scores: list[list[float]]


@dataclass
class DecodingPass:
    """One HF ``generate`` call of a decoding mode.

    Attributes:
        index: 0 for the first pass of the call, then 1, 2, ... (micro-batches).
        prompts: The rendered prompt text of each row (special tokens shown, padding not).
        rows: (question index, passage index) of each row; the passage index is None
            when the prompt holds all K passages ("concat").
        outputs: The text generated from each row (filled when decoding ends).
        captured: False when the pass was rebuilt after decoding (see the module docstring).
    """

    index: int
    prompts: list[str]
    rows: list[tuple[int, int | None]]
    outputs: list[str] = field(default_factory=list)
    captured: bool = True


def retrieve(model: Any, questions: Sequence[str], num_docs: int | None) -> Retrieval:
    """The K passages of each question with p(z|x) and q . d (eval mode, no gradient)."""
    with model.inference(), torch.no_grad():
        doc_lp, retrieved = model.retrieve(list(questions), model.resolve_num_docs(num_docs))
    return Retrieval(
        questions=list(questions),
        passages=retrieved.passages,
        priors=doc_lp.detach().float().exp().cpu().tolist(),
        scores=retrieved.scores.detach().float().cpu().tolist(),
    )


def _eos_ids(model: Any) -> set[int]:
    ids = {model.generator_tokenizer.eos_token_id}
    configured = getattr(getattr(model.generator, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.discard(None)
    return ids


class _PassRecorder(BaseStreamer):
    """A streamer that records each ``generate`` call: prompt ids first, then one token per row per step.

    Calls that reach the streamer are forwarded to `inner` (a caller's own streamer) unchanged.
    """

    def __init__(
        self,
        model: Any,
        k: int,
        rows_per_question: int,
        per_passage: bool,
        on_pass: Callable[[DecodingPass], None],
        inner: BaseStreamer | None = None,
    ) -> None:
        self.tokenizer, self.eos = model.generator_tokenizer, _eos_ids(model)
        pad = self.tokenizer.pad_token_id
        self.pad = self.tokenizer.eos_token_id if pad is None else pad
        self.k, self.rows_per_question, self.per_passage = k, rows_per_question, per_passage
        self.on_pass, self.inner = on_pass, inner
        self.passes: list[DecodingPass] = []
        self._new: list[list[int]] | None = None
        self._row = 0  # rows seen in earlier passes of this call

    def put(self, value: torch.Tensor) -> None:
        """Record a call's prompts (its first put, then `on_pass`) or one step's new token per row."""
        if self.inner is not None:
            self.inner.put(value)
        if self._new is None:  # a new generate call: its (left-padded) prompts
            prompts = [self._prompt_text(row) for row in value.tolist()]
            rows = [self._row + i for i in range(len(prompts))]
            self.passes.append(
                DecodingPass(index=len(self.passes), prompts=prompts, rows=[self.row_of(r) for r in rows])
            )
            self._new = [[] for _ in prompts]
            self._row += len(prompts)
            self.on_pass(self.passes[-1])
            return
        for row, tokens in zip(self._new, value.reshape(len(self._new), -1).tolist(), strict=True):
            row.extend(tokens)

    def end(self) -> None:
        """A generate call ended: its rows' texts, each cut at its first EOS."""
        if self.inner is not None:
            self.inner.end()
        if self._new is not None:
            self.passes[-1].outputs = [self._output_text(ids) for ids in self._new]
        self._new = None

    def row_of(self, row: int) -> tuple[int, int | None]:
        """(question, passage) of a row counted over the whole call."""
        question, offset = divmod(row, self.rows_per_question)
        return question, (offset * self.k // self.rows_per_question if self.per_passage else None)

    def _prompt_text(self, ids: list[int]) -> str:
        start = 0
        while start < len(ids) and ids[start] == self.pad:  # left padding only: a pad id may also be EOS
            start += 1
        return self.tokenizer.decode(ids[start:], skip_special_tokens=False)

    def _output_text(self, ids: list[int]) -> str:
        cut = next((i for i, t in enumerate(ids) if t in self.eos), len(ids))
        return self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()


def _rebuilt_pass(model: Any, retrieval: Retrieval, decoding: str, answers: list[RagAnswer]) -> DecodingPass:
    """A pass rebuilt after decoding: each question's prompts, its final answer as their output."""
    prompts, rows, outputs = [], [], []
    for b, (question, passages) in enumerate(zip(retrieval.questions, retrieval.passages, strict=True)):
        groups = [(None, passages)] if decoding == "concat" else [([k], [p]) for k, p in enumerate(passages)]
        for k, group in groups:
            ids = model.prompts.encode(question, group).input_ids
            prompts.append(model.generator_tokenizer.decode(ids, skip_special_tokens=False))
            rows.append((b, None if k is None else k[0]))
            outputs.append(answers[b].text)
    return DecodingPass(index=0, prompts=prompts, rows=rows, outputs=outputs, captured=False)


def generate_recording(
    model: Any,
    questions: Sequence[str],
    options: dict[str, Any],
    retrieval: Retrieval,
    on_pass: Callable[[DecodingPass], None],
) -> tuple[list[RagAnswer], list[DecodingPass]]:
    """`model.generate(questions=..., **options)`, with its decoding passes recorded.

    Args:
        model: The RAGSequence.
        questions: The questions `retrieval` was made for.
        options: `generate` keywords (num_docs, max_new_tokens, decoding, HF arguments).
        retrieval: `retrieve(model, questions, options["num_docs"])`.
        on_pass: Called with each pass as it starts (its `outputs` are filled when decoding ends).

    Returns:
        The answers and the passes (one rebuilt pass when none could be recorded).
    """
    decoding = options.get("decoding", "thorough")
    inner = options.get("streamer")
    beams = options.get("num_beams") or 1
    returned = options.get("num_return_sequences") or beams
    recorder = None
    if beams == 1 and decoding in ROWS_PER_QUESTION and (inner is None or decoding == "concat"):
        k = len(retrieval.passages[0]) if retrieval.passages else 0
        recorder = _PassRecorder(
            model, k, max(1, ROWS_PER_QUESTION[decoding](k, returned)), decoding != "concat", on_pass, inner
        )
        options = {**options, "streamer": recorder}
    answers = model.generate(questions=list(questions), **options)
    if recorder is not None and recorder.passes:
        return answers, recorder.passes
    rebuilt = _rebuilt_pass(model, retrieval, decoding, answers)
    on_pass(rebuilt)
    return answers, [rebuilt]
