"""Configuration dataclasses, one per concern.

Each dataclass documents its fields and rejects contradictions in
`__post_init__`; the CLI builds its flags from these same dataclasses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class PromptConfig:
    """How f(x, z) is rendered.

    Attributes:
        system_prompt: System turn (chat template) or first paragraph (plain). None: none.
        instruction: Put before the passage in the user turn.
        passage_format: Format of one passage, with `{title}` and `{text}`.
        passage_format_untitled: Format used when a passage has no title.
        question_format: Format of the question, with `{question}`.
        user_format: Layout of the user turn, with `{instruction}`, `{passages}` and `{question}`.
        passage_separator: Between passages when several share one prompt ("concat" decoding).
        answer_prefix: Put after the user turn in plain (no chat template) prompts.
        use_chat_template: True/False forces it; None uses it when the tokenizer has one.
        max_length: Budget in tokens for prompt + answer; passage tokens are cut to fit.
            None: the tokenizer's `model_max_length`, capped at 2048.
    """

    system_prompt: Optional[str] = "You answer questions using the given passage. Reply with the answer only."
    instruction: str = "Read the passage and answer the question."
    passage_format: str = "Title: {title}\n{text}"
    passage_format_untitled: str = "{text}"
    question_format: str = "Question: {question}"
    user_format: str = "{instruction}\n\nPassage:\n{passages}\n\n{question}"
    passage_separator: str = "\n\n"
    answer_prefix: str = "\nAnswer: "
    use_chat_template: Optional[bool] = None
    max_length: Optional[int] = None

    def __post_init__(self) -> None:
        for name, keys in (("passage_format", ("{text}",)), ("question_format", ("{question}",)),
                           ("user_format", ("{passages}", "{question}"))):
            value = getattr(self, name)
            for key in keys:
                _check(key in value, f"{name} must contain {key}, got {value!r}")
        _check(self.max_length is None or self.max_length > 0,
               f"max_length must be a positive number of tokens or None, got {self.max_length!r}")


@dataclass
class RagConfig:
    """How the RAG-Sequence model scores and marginalises.

    Attributes:
        num_docs: K, passages retrieved per question.
        temperature: tau in p(z|x) = softmax(q.d / tau).
        length_normalize: Divide log p(y|f(x,z)) by the answer length before
            marginalising. Off by default: it changes the objective away from the
            marginal likelihood (DESIGN.md) and is only a heuristic for long answers.
        freeze_retriever: No gradient into the question encoder from the loss.
        freeze_generator: No gradient into the generator from the loss.
        scoring: "logits_to_keep" (left padding, logits only at answer positions) or
            "hidden" (decoder hidden states at answer positions, chunked
            linear cross-entropy, no logits tensor at all), or "full"
            (all-position logits: the naive reference, for benchmarks and tests).
        micro_batch_size: Generator sequences per forward; None: all B*K at once.
        gradient_checkpointing: Enable HF gradient checkpointing on the generator.
    """

    num_docs: int = 5
    temperature: float = 1.0
    length_normalize: bool = False
    freeze_retriever: bool = False
    freeze_generator: bool = False
    scoring: str = "logits_to_keep"
    micro_batch_size: Optional[int] = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.num_docs, int) and self.num_docs > 0,
               f"num_docs must be a positive integer, got {self.num_docs!r}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature!r}")
        _check(self.scoring in ("logits_to_keep", "hidden", "full"),
               f"scoring must be 'logits_to_keep', 'hidden' or 'full', got {self.scoring!r}")
        _check(self.micro_batch_size is None or self.micro_batch_size > 0,
               f"micro_batch_size must be a positive integer or None, got {self.micro_batch_size!r}")
        _check(not (self.freeze_retriever and self.freeze_generator),
               "freeze_retriever and freeze_generator are both True: nothing would train")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls, data: dict[str, Any]):
    """Build `cls` from `data`, naming any unknown key instead of ignoring it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**data)
