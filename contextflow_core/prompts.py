"""The prompt function f(x, z): the only place text becomes generator ids and labels.

Boundary: this module knows tokenizers and templates, not models, retrieval or
losses. Labels are built by construction: the prompt and the answer are
tokenized separately and concatenated, the answer followed by EOS, so the label
mask never depends on searching the text for an "Answer:" marker.

When prompt + answer exceed the budget, passage tokens are cut (from the end of
the passage block); the question and the answer never are.

Shapes: N sequences (B questions x K passages), L padded length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .config import PromptConfig
from .types import Passage

IGNORE_INDEX = -100
_SLOT = "\u2063CONTEXTFLOW_PASSAGES\u2063"  # marks where passages go in the rendered frame
_DEFAULT_MAX_LENGTH = 2048

PassageLike = Union[Passage, str]


@dataclass
class EncodedPrompt:
    """One tokenized (prompt, answer) pair.

    Attributes:
        input_ids: prompt ids followed by answer ids (answer ends with EOS).
        labels: IGNORE_INDEX over the prompt, the answer ids (with EOS) after it.
        prompt_length: number of prompt ids.
        passage_tokens_cut: passage tokens dropped to fit the budget.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    passage_tokens_cut: int = 0


def _as_passage(passage: PassageLike) -> Passage:
    return passage if isinstance(passage, Passage) else Passage(id="", text=str(passage))


def _require_text(name: str, value, index: Optional[int] = None) -> str:
    where = f"{name}[{index}]" if index is not None else name
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: expected non-empty text, got {value!r}")
    return value


class PromptBuilder:
    """Builds f(x, z) token ids and answer labels for one generator tokenizer.

    Args:
        tokenizer: The generator's tokenizer; must have an EOS token.
        config: Template; defaults to `PromptConfig()`.

    Example:
        >>> builder = PromptBuilder(tokenizer)  # doctest: +SKIP
        >>> enc = builder.encode("Who founded Tarsk?", ["Tarsk was founded by Ilo."], "Ilo")  # doctest: +SKIP
        >>> enc.labels[enc.prompt_length:] == builder.answer_ids("Ilo")  # doctest: +SKIP
        True
    """

    def __init__(self, tokenizer, config: Optional[PromptConfig] = None) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"generator_tokenizer: expected a tokenizer with an EOS token (answers end with it), "
                f"got {type(tokenizer).__name__} with eos_token=None"
            )
        self.tokenizer = tokenizer
        self.config = config or PromptConfig()
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.config.use_chat_template and not has_template:
            raise ValueError(
                "PromptConfig.use_chat_template=True but the generator tokenizer has no chat_template; "
                "set use_chat_template=None to fall back to the plain format"
            )
        self.uses_chat_template = has_template if self.config.use_chat_template is None else self.config.use_chat_template

    @property
    def max_length(self) -> int:
        if self.config.max_length is not None:
            return self.config.max_length
        limit = getattr(self.tokenizer, "model_max_length", None) or _DEFAULT_MAX_LENGTH
        return int(min(limit, _DEFAULT_MAX_LENGTH))

    # -- text ---------------------------------------------------------------
    def render_passage(self, passage: PassageLike) -> str:
        p = _as_passage(passage)
        if p.title:
            return self.config.passage_format.format(title=p.title, text=p.text)
        return self.config.passage_format_untitled.format(text=p.text)

    def render_passages(self, passages: Sequence[PassageLike]) -> str:
        return self.config.passage_separator.join(self.render_passage(p) for p in passages)

    def _frame_text(self, question: str) -> tuple[str, str]:
        """The prompt text around the passage slot: (before, after)."""
        cfg = self.config
        user = cfg.user_format.format(
            instruction=cfg.instruction, passages=_SLOT, question=cfg.question_format.format(question=question)
        )
        if self.uses_chat_template:
            messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = (f"{cfg.system_prompt}\n\n" if cfg.system_prompt else "") + user + cfg.answer_prefix
        before, after = text.split(_SLOT)
        return before, after

    # -- ids ----------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def frame_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the passage block for `question`."""
        before, after = self._frame_text(question)
        prefix = self._ids(before)
        bos = self.tokenizer.bos_token_id
        if not self.uses_chat_template and bos is not None:
            prefix = [bos] + prefix
        return prefix, self._ids(after)

    def answer_ids(self, answer: str) -> list[int]:
        """Answer ids followed by EOS: exactly the labelled tokens."""
        return self._ids(answer) + [self.tokenizer.eos_token_id]

    def encode(
        self, question: str, passages: Union[PassageLike, Sequence[PassageLike]], answer: Optional[str] = None
    ) -> EncodedPrompt:
        """Tokenize f(question, passages) (+ answer) within the length budget."""
        if isinstance(passages, (str, Passage)):
            passages = [passages]
        _require_text("question", question)
        answer_ids = self.answer_ids(_require_text("answer", answer)) if answer is not None else []
        prefix, suffix = self.frame_ids(question)
        block = self._ids(self.render_passages(passages))
        return self._assemble(prefix, block, suffix, answer_ids)

    def _assemble(self, prefix: list[int], block: list[int], suffix: list[int], answer_ids: list[int]) -> EncodedPrompt:
        fixed = len(prefix) + len(suffix) + len(answer_ids)
        room = self.max_length - fixed
        if room < 0:
            raise ValueError(
                f"max_length: the prompt frame with the question ({len(prefix) + len(suffix)} tokens) and the "
                f"answer ({len(answer_ids)} tokens, EOS included) need {fixed} tokens, more than "
                f"max_length={self.max_length}; shorten them or raise PromptConfig.max_length"
            )
        cut = max(0, len(block) - room)
        prompt = prefix + block[: len(block) - cut] + suffix
        labels = [IGNORE_INDEX] * len(prompt) + answer_ids
        return EncodedPrompt(prompt + answer_ids, labels, len(prompt), cut)

    def encode_batch(
        self,
        questions: Sequence[str],
        passages: Sequence[Sequence[PassageLike]],
        answers: Optional[Sequence[str]] = None,
    ) -> list[EncodedPrompt]:
        """One prompt per (question, passage) pair, flattened row-major: (B*K)."""
        for i, q in enumerate(questions):
            _require_text("questions", q, i)
        answer_ids = [None] * len(questions)
        if answers is not None:
            answer_ids = [self.answer_ids(_require_text("answers", a, i)) for i, a in enumerate(answers)]
        flat = [self.render_passage(p) for row in passages for p in row]
        blocks = self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        out, j = [], 0
        for question, row, ans in zip(questions, passages, answer_ids):
            prefix, suffix = self.frame_ids(question)
            for _ in row:
                out.append(self._assemble(prefix, blocks[j], suffix, ans or []))
                j += 1
        return out

    # -- tensors ------------------------------------------------------------
    def collate(self, encoded: Sequence[EncodedPrompt]) -> dict[str, torch.Tensor]:
        """Left-pad to the longest sequence so every answer ends at the last position.

        Returns input_ids, attention_mask, position_ids and labels, each (N, L).
        Position ids count real tokens only, so padding never shifts positions.
        """
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        length = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            ids[row, length - n :] = torch.tensor(e.input_ids)
            labels[row, length - n :] = torch.tensor(e.labels)
            mask[row, length - n :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels}
