"""Readers that turn user question/answer data and passage files into plain types.

Boundary: this module only parses and validates data (JSONL, JSON, CSV/TSV files,
Python lists, duck-typed HF ``datasets.Dataset`` objects) into `QAExample` and
`Passage`. It knows nothing of tokenizers, models, indexes or prompts, and holds no
torch model code. ``datasets`` is never imported: anything with ``column_names``
that iterates over dict rows is accepted.

Accepted QA row keys:
    question: the question text (required).
    answer: the target answer, a string or a non-empty list of strings (the first
        is the target, all are kept as aliases). HF/SQuAD-style ``answers`` (a list,
        or a dict with a ``text`` list) is accepted when ``answer`` is absent.
    aliases: optional extra acceptable answers.
    gold_ids: optional list of gold passage ids, or one string separated by ``|``.
    gold_id: optional single gold passage id (used when ``gold_ids`` is absent).
    metadata: optional dict carried through unchanged.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from contextflow_core.types import Passage

_ACCEPTED_SOURCES = (
    "a path (str or os.PathLike) to a .jsonl/.ndjson/.json/.csv/.tsv file, a list of "
    "(question, answer[, gold_ids]) tuples, a list of dicts, a list of QAExample, "
    "or a datasets.Dataset split"
)
_QA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


@dataclass
class QAExample:
    """One question with its target answer.

    Attributes:
        question: The question text.
        answer: The target answer the generator is trained towards.
        gold_ids: Ids of passages known to contain the answer (may be empty: joint
            training needs no retrieval labels; they only feed recall@k / MRR).
        aliases: All acceptable answers for exact match / F1, the target first.
            Defaults to ``[answer]``.
        metadata: Free JSON-serialisable metadata (e.g. entity and attribute).
    """

    question: str
    answer: str
    gold_ids: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        aliases = [a for a in self.aliases if a != self.answer]
        self.aliases = [self.answer] + aliases

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict that `load_qa` reads back unchanged."""
        return {
            "question": self.question,
            "answer": self.answer,
            "gold_ids": list(self.gold_ids),
            "aliases": list(self.aliases),
            "metadata": dict(self.metadata),
        }


QASource = Union[str, "os.PathLike[str]", Iterable[Any]]


def load_qa(source: QASource) -> list[QAExample]:
    """Loads question/answer examples from a file, a list, or a HF dataset.

    Args:
        source: A path to a ``.jsonl``/``.ndjson``/``.json``/``.csv``/``.tsv`` file; a
            list of ``(question, answer)`` or ``(question, answer, gold_ids)`` tuples;
            a list of dicts or `QAExample`; or a duck-typed ``datasets.Dataset``.

    Returns:
        The examples, in source order.

    Raises:
        FileNotFoundError: The path does not exist (the message names it).
        ValueError: A required column is missing (naming column, file and line), or
            a row has an empty or non-string question/answer (naming row and value).
        TypeError: The source type is unsupported (naming it and what is accepted).

    Example:
        >>> load_qa([("Who founded Brakton?", "Ilsa Morn")])[0].answer
        'Ilsa Morn'
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_qa_file(Path(source))
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):
        return _load_qa_dataset(source)
    if isinstance(source, (list, tuple)):
        return [_qa_from_item(item, i) for i, item in enumerate(source)]
    raise TypeError(f"load_qa() got {type(source).__name__}; expected {_ACCEPTED_SOURCES}")


def load_passages(path: str | os.PathLike[str]) -> list[Passage]:
    """Loads passages from a JSONL file with keys ``id``, ``text``, ``title``, ``metadata``.

    ``id`` and ``text`` are required; ``title`` and ``metadata`` are optional.

    Args:
        path: Path to the JSONL file (one JSON object per line; blank lines skipped).

    Returns:
        The passages, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object, lacks ``id``/``text``, has a
            non-string text, or repeats an id (the message names file and line).
    """
    path = Path(path)
    _check_file(path)
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    for line_no, row in _iter_jsonl(path):
        where = f"{path}, line {line_no}"
        for key in ("id", "text"):
            if key not in row:
                raise ValueError(f"missing key {key!r} in {where}; got keys {sorted(row)}")
        pid, text = row["id"], row["text"]
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or str(pid) == "":
            raise ValueError(f"'id' must be a non-empty string in {where}; got {pid!r}")
        if not isinstance(text, str):
            raise ValueError(f"'text' must be a string in {where}; got {text!r}")
        pid = str(pid)
        if pid in seen:
            raise ValueError(f"duplicate passage id {pid!r} in {where} (first on line {seen[pid]})")
        seen[pid] = line_no
        metadata = row.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError(f"'metadata' must be an object in {where}; got {metadata!r}")
        passages.append(Passage(id=pid, text=text, title=row.get("title"), metadata=metadata))
    return passages


# ---------------------------------------------------------------------------- files


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"not a file: {str(path)!r}")


def _load_qa_file(path: Path) -> list[QAExample]:
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix not in _QA_SUFFIXES:
        raise ValueError(f"unsupported file extension {suffix!r} for {str(path)!r}; expected one of {_QA_SUFFIXES}")
    if suffix in (".csv", ".tsv"):
        rows = _iter_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".json" and _starts_with_bracket(path):
        rows = _iter_json_array(path)
    else:
        rows = _iter_jsonl(path)
    examples = []
    for i, (line_no, row) in enumerate(rows):
        examples.append(_qa_from_dict(row, i, where=f"{path}, line {line_no}"))
    return examples


def _starts_with_bracket(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid JSON in {path}, line {line_no}: {e.msg}") from e
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object in {path}, line {line_no}; got {type(row).__name__}")
            yield line_no, row


def _iter_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON in {path}, line {e.lineno}: {e.msg}") from e
    if not isinstance(rows, list):
        raise ValueError(f"expected a JSON array of objects in {path}; got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object in {path}, item {i}; got {type(row).__name__}")
        yield i, row


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


# ---------------------------------------------------------------------------- rows


def _load_qa_dataset(dataset: Any) -> list[QAExample]:
    columns = dataset.column_names
    if isinstance(columns, dict):
        raise TypeError(
            f"load_qa() got {type(dataset).__name__} with splits {sorted(columns)}; "
            "pass one split, e.g. dataset['train']"
        )
    if "question" not in columns:
        raise ValueError(f"missing column 'question' in {type(dataset).__name__}; got columns {list(columns)}")
    if "answer" not in columns and "answers" not in columns:
        raise ValueError(
            f"missing column 'answer' (or 'answers') in {type(dataset).__name__}; got columns {list(columns)}"
        )
    return [_qa_from_dict(row, i, where=f"dataset row {i}") for i, row in enumerate(dataset)]


def _qa_from_item(item: Any, index: int) -> QAExample:
    if isinstance(item, QAExample):
        return _qa_from_dict(item.to_dict(), index, where=f"row {index}")
    if isinstance(item, dict):
        return _qa_from_dict(item, index, where=f"row {index}")
    if isinstance(item, (tuple, list)):
        if len(item) not in (2, 3):
            raise ValueError(
                f"row {index}: expected (question, answer) or (question, answer, gold_ids); "
                f"got a {type(item).__name__} of length {len(item)}: {item!r}"
            )
        row = {"question": item[0], "answer": item[1]}
        if len(item) == 3:
            row["gold_ids"] = item[2]
        return _qa_from_dict(row, index, where=f"row {index}")
    raise TypeError(
        f"row {index}: got {type(item).__name__}; expected a (question, answer) tuple, a dict or a QAExample"
    )


def _qa_from_dict(row: dict[str, Any], index: int, where: str) -> QAExample:
    if "question" not in row:
        raise ValueError(f"missing column 'question' in {where}; got columns {sorted(row)}")
    if "answer" in row:
        raw_answer = row["answer"]
    elif "answers" in row:
        raw_answer = row["answers"]
    else:
        raise ValueError(f"missing column 'answer' in {where}; got columns {sorted(row)}")
    question = _check_text(row["question"], "question", index, where)
    answers = _parse_answers(raw_answer, index, where)
    extra = row.get("aliases") or []
    extra = [extra] if isinstance(extra, str) else list(extra)
    for alias in extra:
        _check_text(alias, "alias", index, where)
    return QAExample(
        question=question,
        answer=answers[0],
        gold_ids=_parse_gold_ids(row, index, where),
        aliases=answers + [a for a in extra if a not in answers],
        metadata=_parse_metadata(row.get("metadata"), index, where),
    )


def _parse_metadata(raw: Any, index: int, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):  # CSV cells hold JSON text
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"row {index} ({where}): metadata is not valid JSON; got {raw!r}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"row {index} ({where}): metadata must be an object; got {raw!r}")
    return dict(raw)


def _check_text(value: Any, what: str, index: int, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"row {index} ({where}): {what} must be a non-empty string; got {value!r}")
    return value


def _parse_answers(raw: Any, index: int, where: str) -> list[str]:
    if isinstance(raw, dict) and "text" in raw:  # SQuAD style {"text": [...], "answer_start": [...]}
        raw = raw["text"]
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ValueError(f"row {index} ({where}): answer list is empty; got {raw!r}")
        return [_check_text(a, "answer", index, where) for a in raw]
    return [_check_text(raw, "answer", index, where)]


def _parse_gold_ids(row: dict[str, Any], index: int, where: str) -> list[str]:
    raw: Any | None = row.get("gold_ids")
    if raw is None or raw == "":
        raw = row.get("gold_id")
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [part.strip() for part in raw.split("|") if part.strip()]
    if isinstance(raw, int) and not isinstance(raw, bool):
        return [str(raw)]
    if isinstance(raw, (list, tuple)):
        for g in raw:
            if not isinstance(g, (str, int)) or isinstance(g, bool):
                raise ValueError(f"row {index} ({where}): gold ids must be strings; got {raw!r}")
        return [str(g) for g in raw]
    raise ValueError(f"row {index} ({where}): gold_ids must be a list or a '|'-separated string; got {raw!r}")
