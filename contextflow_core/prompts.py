"""The prompt function f(x, z): the only place text becomes generator ids and labels.

Boundary: this module knows tokenizers and templates, not models, retrieval or
losses. Labels are built by construction: the prompt and the answer are
tokenized separately and concatenated, the answer followed by EOS, so the label
mask never depends on searching the text for an "Answer:" marker.

When prompt + answer exceed the budget, passage tokens are cut (from the end of
the passage block); the question and the answer never are.

User text is data: questions, passages (title and text), answers, the system
prompt and the instruction are tokenized with special-token parsing off, so a
passage holding ``<|im_end|>`` cannot close the user turn and an answer holding
the EOS string trains on its characters. Only the template (the chat template
and the `PromptConfig` formats) writes control tokens; see `prompt_tokens`.

Shapes: N sequences (B questions x K passages), L padded length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import PromptConfig
from .prompt_tokens import Piece, SlotMarkers, literal_ids, pieces_ids
from .types import Passage

IGNORE_INDEX = -100
_DEFAULT_MAX_LENGTH = 2048
_FRAME_SLOTS = ("system", "instruction", "question", "passages")  # user text in the frame
_PASSAGE_SLOTS = ("title", "text")

PassageLike = Passage | str


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


def _require_text(name: str, value, index: int | None = None) -> str:
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

    def __init__(self, tokenizer, config: PromptConfig | None = None) -> None:
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
        self.uses_chat_template = (
            has_template if self.config.use_chat_template is None else self.config.use_chat_template
        )

    @property
    def max_length(self) -> int:
        """Token budget of prompt + answer: `PromptConfig.max_length`, else the tokenizer's, capped at 2048."""
        if self.config.max_length is not None:
            return self.config.max_length
        limit = getattr(self.tokenizer, "model_max_length", None) or _DEFAULT_MAX_LENGTH
        return int(min(limit, _DEFAULT_MAX_LENGTH))

    # -- text ---------------------------------------------------------------
    def render_passage(self, passage: PassageLike) -> str:
        """One passage as text: `passage_format` (or `passage_format_untitled` when it has no title)."""
        p = _as_passage(passage)
        if p.title:
            return self.config.passage_format.format(title=p.title, text=p.text)
        return self.config.passage_format_untitled.format(text=p.text)

    def render_passages(self, passages: Sequence[PassageLike]) -> str:
        """Several passages as one text, joined by `passage_separator` ("concat" prompts)."""
        return self.config.passage_separator.join(self.render_passage(p) for p in passages)

    # -- pieces: template text and user text, kept apart ---------------------
    def _template_texts(self) -> list[str]:
        cfg = self.config
        template = getattr(self.tokenizer, "chat_template", None)
        return [
            cfg.user_format,
            cfg.question_format,
            cfg.answer_prefix,
            cfg.passage_format,
            cfg.passage_format_untitled,
            cfg.passage_separator,
            str(template or ""),
        ]

    def _frame_pieces(self, question: str) -> tuple[list[Piece], list[Piece]]:
        """The prompt around the passage block, as (before, after) pieces."""
        cfg = self.config
        slots = SlotMarkers(_FRAME_SLOTS, self._template_texts())
        user = cfg.user_format.format(
            instruction=slots["instruction"],
            passages=slots["passages"],
            question=cfg.question_format.format(question=slots["question"]),
        )
        if self.uses_chat_template:
            messages = [{"role": "system", "content": slots["system"]}] if cfg.system_prompt else []
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = (f"{slots['system']}\n\n" if cfg.system_prompt else "") + user + cfg.answer_prefix
        values = {"system": cfg.system_prompt or "", "instruction": cfg.instruction, "question": question}
        items = slots.split(text, values)
        cuts = [i for i, (_, slot) in enumerate(items) if slot == "passages"]
        if len(cuts) != 1:
            raise ValueError(
                f"PromptConfig.user_format: expected the passage block once in the rendered prompt, found it "
                f"{len(cuts)} times; keep exactly one {{passages}} in user_format and use a chat template that "
                "writes the user message unchanged"
            )
        pieces = [(t, slot is None) for t, slot in items]
        return pieces[: cuts[0]], pieces[cuts[0] + 1 :]

    def _block_pieces(self, passages: Sequence[PassageLike], slots: SlotMarkers) -> list[Piece]:
        """The passage block (passages joined by the separator) as pieces."""
        cfg = self.config
        pieces: list[Piece] = []
        for i, passage in enumerate(passages):
            p = _as_passage(passage)
            if i:
                pieces.append((cfg.passage_separator, True))
            if p.title:
                text = cfg.passage_format.format(title=slots["title"], text=slots["text"])
            else:
                text = cfg.passage_format_untitled.format(text=slots["text"])
            values = {"title": str(p.title or ""), "text": str(p.text)}
            pieces += [(t, slot is None) for t, slot in slots.split(text, values)]
        return pieces

    def _with_bos(self, prefix: list[int]) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] + prefix if not self.uses_chat_template and bos is not None else prefix

    # -- ids ----------------------------------------------------------------
    def text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of user texts, special-token strings read as plain characters."""
        return literal_ids(self.tokenizer, texts)

    def frame_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the passage block for `question`."""
        prefix, suffix = pieces_ids(self.tokenizer, self._frame_pieces(question))
        return self._with_bos(prefix), suffix

    def answer_ids(self, answer: str) -> list[int]:
        """Answer ids followed by EOS: exactly the labelled tokens (an EOS string in the text stays text)."""
        return literal_ids(self.tokenizer, [answer])[0] + [self.tokenizer.eos_token_id]

    def encode(
        self, question: str, passages: PassageLike | Sequence[PassageLike], answer: str | None = None
    ) -> EncodedPrompt:
        """Tokenize f(question, passages) (+ answer) within the length budget; the passages share one prompt."""
        if isinstance(passages, (str, Passage)):
            passages = [passages]
        _require_text("question", question)
        if answer is not None:
            _require_text("answer", answer)
        return self._encode_rows([question], [[list(passages)]], None if answer is None else [answer])[0]

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
        answers: Sequence[str] | None = None,
    ) -> list[EncodedPrompt]:
        """One prompt per (question, passage) pair, flattened row-major: (B*K)."""
        for name, values in (("passages", passages), ("answers", answers)):
            if values is not None and len(values) != len(questions):
                raise ValueError(f"{name}: expected one entry per question ({len(questions)}), got {len(values)}")
        for i, q in enumerate(questions):
            _require_text("questions", q, i)
        if answers is not None:
            for i, a in enumerate(answers):
                _require_text("answers", a, i)
        return self._encode_rows(questions, [[[p] for p in row] for row in passages], answers)

    def _encode_rows(self, questions, blocks, answers) -> list[EncodedPrompt]:
        """One prompt per passage block: blocks[b] lists question b's blocks. All text in one tokenizer call."""
        slots = SlotMarkers(_PASSAGE_SLOTS, self._template_texts())
        rows = [piece for q in questions for piece in self._frame_pieces(q)]
        rows += [self._block_pieces(block, slots) for row in blocks for block in row]
        rows += [[(a, False)] for a in answers or []]
        ids = pieces_ids(self.tokenizer, rows)
        B, N = len(questions), sum(len(row) for row in blocks)
        frames, block_ids, answer_ids = ids[: 2 * B], iter(ids[2 * B : 2 * B + N]), ids[2 * B + N :]
        eos = self.tokenizer.eos_token_id
        out = []
        for b, row in enumerate(blocks):
            prefix, suffix = self._with_bos(frames[2 * b]), frames[2 * b + 1]
            ans = answer_ids[b] + [eos] if answers is not None else []
            out += [self._assemble(prefix, next(block_ids), suffix, ans) for _ in row]
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
