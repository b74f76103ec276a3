"""What `generate_qa` returns: the pairs, the report of what was kept and why, the file formats.

Boundary: plain data and file writing (atomic, `contextflow_core.io_utils`). Two formats:

* ContextFlow QA JSONL (`save_jsonl`): one `QAExample.to_dict()` per line, what
  `contextflow_core.data.load_qa` reads back identically.
* LlamaIndex's `EmbeddingQAFinetuneDataset` JSON (`save_llamaindex`): ``queries``
  {qa_id: question}, ``corpus`` {passage id: text} (every passage the run was given),
  ``relevant_docs`` {qa_id: [passage id]}, ``mode`` "text", plus two extra keys the class
  ignores: ``answers`` {qa_id: answer} (read by ContextFlow's ``finetune_from_index``) and
  ``contextflow`` (a marker naming the file's kind).

Neither writer replaces a file ContextFlow did not write: an existing file is replaced
only when it is empty or holds generated QA of the same format.

Example:
    >>> result = generate_qa(passages, "cloze")  # doctest: +SKIP
    >>> train, val = result.split(0.2, seed=0)  # doctest: +SKIP
    >>> train.save_jsonl("train.jsonl"); val.save_llamaindex("val.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

from contextflow_core.data.readers import QAExample
from contextflow_core.io_utils import atomic_write_text
from contextflow_core.types import Passage

__all__ = ["GENERATOR_TAG", "SKIP_REASONS", "QAGenerationResult", "QAReport"]

GENERATOR_TAG = "contextflow.generate_qa"
"""``metadata["source"]`` of every generated example (and how saved files are recognised)."""

SKIP_REASONS = (
    "no_answer_span",
    "writer_error",
    "not_text",
    "empty",
    "over_long",
    "unparseable",
    "answer_not_in_passage",
    "question_contains_answer",
    "duplicate",
    "round_trip_miss",
)
"""Report keys, in the order they are checked. ``no_answer_span`` counts passages (no prompt
could be built); the others count prompts."""

PathLike = Union[str, "os.PathLike[str]"]


def _skip_counts() -> dict[str, int]:
    return dict.fromkeys(SKIP_REASONS, 0)


@dataclass
class QAReport:
    """Counts of one `generate_qa` run.

    Attributes:
        passages: Passages given.
        sampled: Passages questions were written for.
        prompts: Prompts built.
        cached: Replies read from the cache (no writer call).
        writer_calls: Prompts sent to the writer.
        replies: Replies that were strings (cached or fresh).
        kept: Pairs kept.
        skipped: Per reason in `SKIP_REASONS`, how many were dropped.
        seconds: Wall time of the run.
        writer_seconds: Time spent waiting for the writer.
        first_error: The first writer error or non-string reply, as text (None without one).
    """

    passages: int = 0
    sampled: int = 0
    prompts: int = 0
    cached: int = 0
    writer_calls: int = 0
    replies: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=_skip_counts)
    seconds: float = 0.0
    writer_seconds: float = 0.0
    first_error: str | None = None

    @property
    def pairs_per_s(self) -> float:
        """Kept pairs per second of wall time (0 when the run took no measurable time)."""
        return self.kept / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every count, plus ``pairs_per_s``."""
        return {
            "passages": self.passages,
            "sampled": self.sampled,
            "prompts": self.prompts,
            "cached": self.cached,
            "writer_calls": self.writer_calls,
            "replies": self.replies,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "seconds": self.seconds,
            "writer_seconds": self.writer_seconds,
            "pairs_per_s": self.pairs_per_s,
            "first_error": self.first_error,
        }

    def format(self) -> str:
        """A small plain-text table of the report (what `contextflow qa generate` prints)."""
        rows: list[tuple[str, object]] = [
            ("passages", self.passages),
            ("sampled", self.sampled),
            ("prompts", self.prompts),
            ("cached replies", self.cached),
            ("writer calls", self.writer_calls),
            ("replies", self.replies),
        ]
        rows += [(f"skipped: {reason.replace('_', ' ')}", n) for reason, n in self.skipped.items()]
        rows += [("kept", self.kept), ("seconds", f"{self.seconds:.2f}"), ("pairs/s", f"{self.pairs_per_s:.2f}")]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        if self.first_error:
            lines.append(f"first writer error: {self.first_error}")
        return "\n".join(lines)


@dataclass
class QAGenerationResult:
    """Generated question/answer pairs with their report.

    Attributes:
        examples: The kept pairs; ``gold_ids`` is ``[source passage id]``, ``metadata`` holds
            ``source`` (`GENERATOR_TAG`), ``mode``, ``writer``, ``passage_id`` and ``qa_id``
            ("<passage id>#<slot>", stable across runs).
        report: The `QAReport` of the run (shared by the parts of a `split`).
        passages: Every passage the run was given (the corpus of `save_llamaindex`).
    """

    examples: list[QAExample]
    report: QAReport
    passages: list[Passage] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.examples)

    def save_jsonl(self, path: PathLike) -> Path:
        """Write the pairs as ContextFlow QA JSONL (atomically); `load_qa(path)` reads them back.

        Raises:
            FileExistsError: `path` exists and is not an empty file or generated QA JSONL.
        """
        path = _target(path, "save_jsonl", _is_generated_jsonl)
        atomic_write_text(path, "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in self.examples))
        return path

    def save_llamaindex(self, path: PathLike) -> Path:
        """Write LlamaIndex's `EmbeddingQAFinetuneDataset` JSON layout (atomically), answers included.

        ``EmbeddingQAFinetuneDataset.from_json(path)`` reads it (ignoring the extra keys), and
        so does ``finetune_from_index(None, path)`` (with the answers).

        Raises:
            FileExistsError: `path` exists and is not an empty file or a file this method wrote.
        """
        path = _target(path, "save_llamaindex", _is_generated_llamaindex)
        ids = [e.metadata.get("qa_id", f"q{i}") for i, e in enumerate(self.examples)]
        data = {
            "queries": {q: e.question for q, e in zip(ids, self.examples, strict=True)},
            "corpus": {p.id: p.text for p in self.passages},
            "relevant_docs": {q: list(e.gold_ids) for q, e in zip(ids, self.examples, strict=True)},
            "mode": "text",
            "answers": {q: e.answer for q, e in zip(ids, self.examples, strict=True)},
            "contextflow": {"kind": "generated_qa", "source": GENERATOR_TAG, "version": 1},
        }
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return path

    def split(self, val_fraction: float, seed: int = 0) -> tuple[QAGenerationResult, QAGenerationResult]:
        """``(train, val)`` with every pair of a source passage on the same side.

        Args:
            val_fraction: Share of the source passages held out, in (0, 1): rounded, at
                least one passage and at most all but one.
            seed: Seeds which passages are held out.

        Raises:
            ValueError: `val_fraction` out of range, or fewer than two source passages.
        """
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an integer, got {seed!r}")
        sources = list(dict.fromkeys(e.gold_ids[0] for e in self.examples if e.gold_ids))
        if len(sources) < 2:
            raise ValueError(
                f"val_fraction: holding out by source passage needs pairs from at least 2 passages, "
                f"got {len(sources)}; generate from more passages, or skip the split"
            )
        random.Random(seed).shuffle(sources)
        held = set(sources[: min(len(sources) - 1, max(1, round(val_fraction * len(sources))))])
        val = [e for e in self.examples if e.gold_ids and e.gold_ids[0] in held]
        train = [e for e in self.examples if not (e.gold_ids and e.gold_ids[0] in held)]
        return replace(self, examples=train), replace(self, examples=val)


def _target(path: Any, method: str, ours: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"{method}: expected a file path (str or os.PathLike), got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{method}: expected a file path, got the folder {str(path)!r}")
    if path.exists() and path.stat().st_size > 0 and not ours(path):
        raise FileExistsError(
            f"{method}: {str(path)!r} exists and was not written by generate_qa; it is left "
            "untouched: pass a new path, or remove the file yourself"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_output_path(path: PathLike, fmt: str) -> None:
    """Refuse early (before a long run) an output a later save would refuse; `fmt` "jsonl" or "llamaindex"."""
    _target(path, f"save_{fmt}", _is_generated_jsonl if fmt == "jsonl" else _is_generated_llamaindex)


def _is_generated_jsonl(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(row, dict)
        and isinstance(row.get("metadata"), dict)
        and row["metadata"].get("source") == GENERATOR_TAG
    )


def _is_generated_llamaindex(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("contextflow"), dict)
        and data["contextflow"].get("kind") == "generated_qa"
    )
