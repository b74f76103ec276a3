"""Question writers for `generate_qa`: prompt templates, answer-span picking, reply parsing.

Boundary: this module turns passage text into prompts and a writer's reply into a
question (and answer). It knows nothing of retrieval, indexes, caching or filters
(those live in `qa_generation.py`). The only model code is `EmbeddedQuestionWriter`,
which loads its generator lazily on the first call.

A question writer is any callable ``prompt -> text``; writers here also offer
``batch(prompts) -> list[text]`` for batched generation. Two ship:

* ``"embedded"``: `EmbeddedQuestionWriter`, the embedded SmolLM2-135M-Instruct,
  greedy, left-padded batches, chat template.
* ``"cloze"``: `ClozeWriter`, a rule-based no-LLM writer that rewrites the sentence
  holding the answer into a wh-question.

Extractive (answer-aware) mode: `pick_answers` chooses answer spans in the passage
(numbers, years, names, places, then the object phrase of a sentence), and the writer
is asked for a question whose answer is that span (`DEFAULT_QUESTION_TEMPLATE`).
Abstractive mode: the writer writes a question and its answer (`ABSTRACTIVE_TEMPLATE`,
parsed by `parse_qa`).

Example:
    >>> import random
    >>> text = "Talvo Brenn was born in 1901."
    >>> pick_answers(text, 1, random.Random(0), title="Talvo Brenn")
    ['1901']
    >>> prompt = DEFAULT_QUESTION_TEMPLATE.format(title="Talvo Brenn", passage=text, answer="1901")
    >>> ClozeWriter()(prompt)
    'In what year was Talvo Brenn born?'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from contextflow_core.data.qa_cloze import cloze_question
from contextflow_core.data.qa_spans import pick_answers

__all__ = [
    "ABSTRACTIVE_TEMPLATE",
    "DEFAULT_QUESTION_TEMPLATE",
    "STOPS",
    "WRITERS",
    "ClozeWriter",
    "EmbeddedQuestionWriter",
    "parse_qa",
    "parse_question",
    "pick_answers",
]

DEFAULT_QUESTION_TEMPLATE = (
    "Write one question about the passage. The answer to the question must be the given answer. "
    "Do not put the answer in the question.\n\n"
    "Passage: Mira Talos was born in 1874.\n"
    "Answer: 1874\n"
    "Question: In which year was Mira Talos born?\n\n"
    "Passage: The main export of Korvik is dried figs.\n"
    "Answer: dried figs\n"
    "Question: What is the main export of Korvik?\n\n"
    "Passage: Hollin Mills was founded by Dara Venn.\n"
    "Answer: Dara Venn\n"
    "Question: Who founded Hollin Mills?\n\n"
    "Title: {title}\n"
    "Passage: {passage}\n"
    "Answer: {answer}\n"
    "Question:"
)
"""Extractive prompt (fields ``{title}``, ``{passage}``, ``{answer}``): three worked examples,
then the passage and the chosen answer span; the reply is the question. `ClozeWriter` reads the
last ``Title:``, ``Passage:`` and ``Answer:`` lines of a prompt of this shape."""

ABSTRACTIVE_TEMPLATE = (
    "Read the passage and write one question it answers, then the short answer.\n\n"
    "Passage: Mira Talos was born in 1874.\n"
    "Question: In which year was Mira Talos born?\n"
    "Answer: 1874\n\n"
    "Passage: The main export of Korvik is dried figs.\n"
    "Question: What is the main export of Korvik?\n"
    "Answer: dried figs\n\n"
    "Title: {title}\n"
    "Passage: {passage}\n"
    "Question:"
)
"""Abstractive prompt (fields ``{title}``, ``{passage}``): the reply holds a question and, on a
line starting ``Answer:``, its answer (`parse_qa`)."""

_PREFIX = re.compile(r"^\s*(?:[-*\d.)\s]*)(?:question|q)\s*[:.)-]\s*", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*(?:answer|a)\s*[:.)-]\s*(.*)$", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^(?:who|whom|whose|what|which|when|where|why|how|in|on|at|from|to|by|for|is|are|was|were|"
    r"do|does|did|can|could|has|have|had)\b",
    re.IGNORECASE,
)
_MAX_QUESTION_CHARS = 300


def _clean_question(line: str) -> str | None:
    """A question from one line of a reply, or None when the line holds none."""
    text = _PREFIX.sub("", line).strip().strip("\"'`*").strip()
    if "?" in text:
        text = text[: text.index("?") + 1].strip()
    elif _QUESTION_START.match(text) and text.endswith((".", "")):
        text = text.rstrip(". ").strip() + "?"
    else:
        return None
    if len(text) < 6 or len(text) > _MAX_QUESTION_CHARS or not re.search(r"[A-Za-z]{2}", text):
        return None
    return text


def parse_question(reply: str) -> str | None:
    """The first question in a writer's reply, or None when it holds none.

    Strips ``Question:``/``Q:`` prefixes, list markers and quotes, and cuts the text after
    the first ``?``. A line without ``?`` counts only when it starts like a question
    ("What ...", "In which ..."); it then gets a ``?``. Lines starting ``Answer:`` are skipped.

    Args:
        reply: The writer's raw text.

    Returns:
        The question, ending with ``?``, or None (empty reply, no question, over 300 chars).

    Example:
        >>> parse_question(" Question: Who founded Hollin Mills?\\nAnswer: Dara Venn")
        'Who founded Hollin Mills?'
        >>> parse_question("I cannot help with that.") is None
        True
    """
    if not isinstance(reply, str):
        return None
    for line in reply.splitlines():
        if not line.strip() or _ANSWER_LINE.match(line):
            continue
        return _clean_question(line)
    return None


def parse_qa(reply: str) -> tuple[str, str] | None:
    """``(question, answer)`` from a reply to `ABSTRACTIVE_TEMPLATE`, or None.

    The question is the first line holding a question (see `parse_question`); the answer
    is the text after the first ``Answer:`` that follows it (on its line, or the next
    non-empty line when the marker stands alone).

    Args:
        reply: The writer's raw text (the prompt ends with ``Question:``, so the reply
            usually starts with the question itself).

    Returns:
        The pair with both parts stripped and non-empty, or None.

    Example:
        >>> parse_qa(" What does Korvik export?\\nAnswer: dried figs.")
        ('What does Korvik export?', 'dried figs')
    """
    if not isinstance(reply, str):
        return None
    lines = [line for line in reply.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if _ANSWER_LINE.match(line):
            return None  # an answer before any question
        question = _clean_question(line)
        if question is None:
            continue
        answer = _answer_after(lines[i + 1 :])
        return (question, answer) if answer else None
    return None


def _answer_after(lines: Sequence[str]) -> str | None:
    for j, line in enumerate(lines):
        match = _ANSWER_LINE.match(line)
        if match is None:
            continue
        text = match.group(1).strip() or (lines[j + 1].strip() if j + 1 < len(lines) else "")
        text = text.strip().strip("\"'`*").rstrip(".").strip()
        return text or None
    return None


# ---------------------------------------------------------------------------- writers

_FIELD = r"^{}:[ \t]*(.*)$"


def _last_field(prompt: str, name: str) -> str | None:
    values = re.findall(_FIELD.format(name), prompt, flags=re.MULTILINE)
    return values[-1].strip() if values else None


class ClozeWriter:
    """Rule-based question writer (no LLM): the no-model floor.

    Reads the last ``Passage:``, ``Answer:`` (and ``Title:``) lines of a prompt shaped like
    `DEFAULT_QUESTION_TEMPLATE`, takes the passage sentence holding the answer and turns it
    into a wh-question: the answer becomes a wh-phrase chosen by its type (year, number with
    unit, name after a preposition, ...) and a simple subject-auxiliary inversion is applied.
    Deterministic. A prompt without those fields, or whose answer is not in its passage,
    gets an empty reply (which `generate_qa` counts as bad output).

    Example:
        >>> w = ClozeWriter()
        >>> w(DEFAULT_QUESTION_TEMPLATE.format(title="Korvik", passage="Korvik is known for exporting rope.",
        ...                                    answer="rope"))
        'What is Korvik known for exporting?'
    """

    cache_id = "ClozeWriter/1"
    """Names the writer and its rules' version in `generate_qa`'s cache keys."""

    def __call__(self, prompt: str) -> str:
        """Writes the question for one prompt.

        Args:
            prompt: A filled `DEFAULT_QUESTION_TEMPLATE` (or any text with ``Passage:`` and
                ``Answer:`` lines).

        Returns:
            The question, or ``""`` when the prompt holds no usable passage/answer pair.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
        passage, answer = _last_field(prompt, "Passage"), _last_field(prompt, "Answer")
        if not passage or not answer:
            return ""
        return cloze_question(passage, answer, title=_last_field(prompt, "Title")) or ""

    def batch(self, prompts: Sequence[str]) -> list[str]:
        """Writes one question per prompt (see `__call__`).

        Args:
            prompts: Filled templates.

        Returns:
            The replies, in order.
        """
        return [self(p) for p in prompts]


class EmbeddedQuestionWriter:
    """Question writer on a causal LM: by default the embedded SmolLM2-135M-Instruct.

    Greedy decoding (deterministic), left-padded batches, the tokenizer's chat template when
    it has one (the prompt is the user turn). The model loads lazily on the first call, so
    building a writer is free. Each call restores the model's train/eval mode.

    Args:
        generator: A HF causal LM to write with; None loads the embedded default on first use.
        tokenizer: Its tokenizer; required when `generator` is given.
        reader: For the embedded default: merge ContextFlow's reader adapter (True) or use
            the raw instruct model (False, the default: the reader is trained to answer
            with a span, not to write questions).
        max_new_tokens: Reply length cap (>= 1).
        batch_size: Prompts generated together by `batch` (>= 1).
        chat: Wrap each prompt in the tokenizer's chat template (when it has one).
        max_prompt_tokens: Prompts are cut to their last this-many tokens (>= 8).
        stop: When a reply is complete, besides EOS and `max_new_tokens`: "question" (after the
            first ``?`` or the first non-empty line), "answer" (after the first non-empty line
            following ``Answer:``), None (never), or "auto" (default): "question" when the
            prompt gives the answer after its last ``Passage:`` line (the extractive template),
            "answer" when it does not (the abstractive template). Stopping early is what makes
            a 135M writer affordable on a CPU: it would otherwise keep writing examples.

    Raises:
        TypeError / ValueError: An argument has the wrong type or range.

    Example:
        >>> writer = EmbeddedQuestionWriter()  # doctest: +SKIP
        >>> writer(DEFAULT_QUESTION_TEMPLATE.format(title="Korvik", passage="Korvik exports rope.",
        ...                                         answer="rope"))  # doctest: +SKIP
        ' What does Korvik export?'
    """

    def __init__(
        self,
        generator: Any = None,
        tokenizer: Any = None,
        *,
        reader: bool = False,
        max_new_tokens: int = 40,
        batch_size: int = 8,
        chat: bool = True,
        max_prompt_tokens: int = 1024,
        stop: str | None = "auto",
    ) -> None:
        if (generator is None) != (tokenizer is None):
            raise ValueError(
                "generator/tokenizer: pass both (a HF causal LM and its tokenizer) or neither "
                f"(the embedded default); got generator={type(generator).__name__}, "
                f"tokenizer={type(tokenizer).__name__}"
            )
        if not isinstance(reader, bool):
            raise TypeError(f"reader: expected True or False, got {reader!r}")
        for name, value, low in (
            ("max_new_tokens", max_new_tokens, 1),
            ("batch_size", batch_size, 1),
            ("max_prompt_tokens", max_prompt_tokens, 8),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if not isinstance(chat, bool):
            raise TypeError(f"chat: expected True or False, got {chat!r}")
        if stop is not None and stop not in STOPS and stop != "auto":
            raise ValueError(f"stop: expected None, 'auto' or one of {sorted(STOPS)}, got {stop!r}")
        self.stop = stop
        self.model, self.tokenizer, self.reader = generator, tokenizer, reader
        self.max_new_tokens, self.batch_size, self.chat = max_new_tokens, batch_size, chat
        self.max_prompt_tokens = max_prompt_tokens
        self._embedded = False

    @property
    def cache_id(self) -> str:
        """Names the writer and every setting that changes its output (`generate_qa`'s cache key)."""
        model = (
            "embedded-smollm2-135m" + ("+reader" if self.reader else "")
            if self.model is None or self._embedded
            else str(getattr(getattr(self.model, "config", None), "_name_or_path", "") or type(self.model).__name__)
        )
        return (
            f"EmbeddedQuestionWriter(model={model}, max_new_tokens={self.max_new_tokens}, chat={self.chat}, "
            f"max_prompt_tokens={self.max_prompt_tokens}, stop={self.stop})"
        )

    def _load(self) -> None:
        if self.model is None:
            from contextflow_core.models.defaults import default_generator

            self.model, self.tokenizer = default_generator(reader=self.reader)
            self._embedded = True
            self.model.eval()

    def __call__(self, prompt: str) -> str:
        """Writes the reply to one prompt (greedy).

        Args:
            prompt: The filled template.

        Returns:
            The generated text (special tokens removed).
        """
        return self.batch([prompt])[0]

    def batch(self, prompts: Sequence[str]) -> list[str]:
        """Writes one reply per prompt, `batch_size` prompts per `generate` call.

        Args:
            prompts: Filled templates (str each).

        Returns:
            The replies, in order; identical to one-by-one calls up to float rounding.

        Raises:
            TypeError: A prompt is not a str.
        """
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}]: expected a str, got {type(p).__name__}")
        if not prompts:
            return []
        self._load()
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate(prompts[start : start + self.batch_size]))
        return out

    def _ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if self.chat and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tok(prompt, add_special_tokens=True)["input_ids"]
        return list(ids)[-self.max_prompt_tokens :]

    def _pad_id(self) -> int:
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        rows = [self._ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        pad = self._pad_id()
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)  # (B, T)
        device = next(self.model.parameters()).device
        stops = [_stop_rule(self.stop, p) for p in prompts]
        criteria = None
        if any(stops):
            from transformers import StoppingCriteriaList

            criteria = StoppingCriteriaList([_StopCriteria(self.tokenizer, width, stops)])
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                new = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=False,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=pad,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    stopping_criteria=criteria,
                )[:, width:]  # (B, N)
        finally:
            for module, training in modes.items():
                module.train(training)
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in new.tolist()]
        return [_cut(text, rule) for text, rule in zip(texts, stops, strict=True)]


def _question_done(text: str) -> int:
    """End of the first question (after its ``?``) or first non-empty line; 0 while unfinished."""
    start = len(text) - len(text.lstrip())
    ends = [i + 1 for i in (text.find("?", start), text.find("\n", start)) if i >= 0]
    return min(ends) if ends else 0


def _answer_done(text: str) -> int:
    """End of the first non-empty line after ``Answer:``; 0 while unfinished."""
    match = re.search(r"answer\s*:[ \t]*\n?[ \t]*\S[^\n]*\n", text, flags=re.IGNORECASE)
    return match.end() if match else 0


STOPS: dict[str, Callable[[str], int]] = {"question": _question_done, "answer": _answer_done}
"""Stop rules of `EmbeddedQuestionWriter` (``stop=``): reply text -> end of the complete reply, or 0."""


def _stop_rule(stop: str | None, prompt: str) -> str | None:
    if stop != "auto":
        return stop
    tail = prompt.rsplit("Passage:", 1)
    if len(tail) < 2:
        return None
    return "question" if re.search(r"^Answer:", tail[1], flags=re.MULTILINE) else "answer"


def _cut(text: str, rule: str | None) -> str:
    end = STOPS[rule](text) if rule else 0
    return text[:end] if end else text


class _StopCriteria:
    """Per-row stopping for `generate`: a row is done once its stop rule finds a complete reply."""

    def __init__(self, tokenizer: Any, width: int, rules: list[str | None]) -> None:
        self.tokenizer, self.width, self.rules = tokenizer, width, rules

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [
            rule is not None
            and bool(rule)
            and STOPS[rule](self.tokenizer.decode(row[self.width :], skip_special_tokens=True)) > 0
            for row, rule in zip(input_ids.tolist(), self.rules, strict=True)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


WRITERS: dict[str, Callable[..., Any]] = {"embedded": EmbeddedQuestionWriter, "cloze": ClozeWriter}
"""Built-in question writers by name (`generate_qa(writer="cloze")`)."""
