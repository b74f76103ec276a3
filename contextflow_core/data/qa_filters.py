"""The filters of `generate_qa`: which written question/answer pairs are kept.

Boundary: pure functions of strings, plus the optional round-trip check that asks a
frozen retriever (a `RAGSequence` or a `Retriever` with an encoder) for its top-k. No
prompts, no writers, no files.

Every filter is on by default except the round trip. A pair is counted under the first
filter it fails, in this order: over-long, answer not in passage, question contains
answer, duplicate, round-trip miss (the reply-level checks, empty and unparseable, run
before these in `generate_qa`).

Text comparisons use `normalize`: Unicode NFKC, lower case, every run of non-word
characters turned into one space. "Occurs in" means as whole tokens: "Tarsk" occurs in
"the river of Tarsk." but not in "Tarskovia".

Example:
    >>> near_duplicates(["Who founded Tarsk?", "who founded Tarsk", "Where is Tarsk?"], 0.8)
    [False, True, False]
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["QAFilters", "contains_tokens", "near_duplicates", "normalize", "round_trip_hits"]

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class QAFilters:
    """Which generated pairs `generate_qa` keeps. Each filter counts what it drops in the report.

    Attributes:
        answer_in_passage: Drop pairs whose answer does not occur (normalised, whole tokens) in
            the source passage. Always true of extractive answers picked from the passage; in
            abstractive mode it keeps only extractive-style answers (set False to allow free ones).
        question_without_answer: Drop questions that contain their own answer.
        dedupe: Drop near-duplicate questions (over the whole run, the first one wins).
        dedupe_threshold: Jaccard similarity of the normalised token sets at or above which two
            questions are duplicates (0 < t <= 1; 1.0 drops only same-token questions). The
            default 0.8 separates "What is the capital of Quenia?" from "... of Tarsk?" (0.71).
        max_question_chars: Drop questions longer than this (characters).
        max_reply_chars: Drop replies longer than this (characters) before parsing: a writer
            that rambles on has not followed the template.
        round_trip: None (off, the default), or a frozen retriever: a `RAGSequence` or a
            `Retriever` with a question encoder. Keeps only pairs whose source passage is in its
            top-`round_trip_k` for the question. Off by default because it biases the set
            towards questions the untrained retriever already gets right, the ones training
            gains least from.
        round_trip_k: k of the round-trip check (>= 1).
    """

    answer_in_passage: bool = True
    question_without_answer: bool = True
    dedupe: bool = True
    dedupe_threshold: float = 0.8
    max_question_chars: int = 300
    max_reply_chars: int = 2000
    round_trip: Any = None
    round_trip_k: int = 5

    def __post_init__(self) -> None:
        for name in ("answer_in_passage", "question_without_answer", "dedupe"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"QAFilters.{name}: expected True or False, got {value!r}")
        t = self.dedupe_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ValueError(f"QAFilters.dedupe_threshold: expected a number in (0, 1], got {t!r}")
        for name in ("max_question_chars", "max_reply_chars", "round_trip_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QAFilters.{name}: expected a positive integer, got {value!r}")
        if self.round_trip is not None and not _is_retriever(self.round_trip):
            raise ValueError(
                "QAFilters.round_trip: expected None, a RAGSequence or a Retriever with a question "
                f"encoder, got {type(self.round_trip).__name__}"
            )


def normalize(text: str) -> str:
    """NFKC, lower case, non-word runs to one space, stripped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def contains_tokens(haystack: str, needle: str) -> bool:
    """Whether `needle` occurs in `haystack` as whole tokens, after `normalize`; False for an empty needle."""
    needle = normalize(needle)
    return bool(needle) and f" {needle} " in f" {normalize(haystack)} "


def near_duplicates(questions: Sequence[str], threshold: float) -> list[bool]:
    """For each question, whether an earlier kept one has token Jaccard >= `threshold` with it.

    Prefix filtering (tokens ordered rarest first) keeps this near-linear: two sets with
    Jaccard >= t share a token among the first |A| - ceil(t |A|) + 1 of each.

    Args:
        questions: The questions, in order (the first of a group is kept).
        threshold: Jaccard threshold in (0, 1].

    Returns:
        One flag per question; True means it duplicates an earlier one.
    """
    token_sets = [frozenset(normalize(q).split()) for q in questions]
    df = Counter(t for s in token_sets for t in s)
    postings: dict[str, list[int]] = {}
    kept: dict[int, frozenset] = {}
    flags = []
    for i, tokens in enumerate(token_sets):
        ordered = sorted(tokens, key=lambda t: (df[t], t))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1] if ordered else [""]
        candidates = {j for t in prefix for j in postings.get(t, ())}
        duplicate = any(_jaccard(tokens, kept[j]) >= threshold for j in candidates)
        flags.append(duplicate)
        if not duplicate:
            kept[i] = tokens
            for t in prefix:
                postings.setdefault(t, []).append(i)
    return flags


def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------------------- round trip


def _is_retriever(obj: Any) -> bool:
    is_rag = hasattr(obj, "question_encoder") and hasattr(obj, "retriever")
    return is_rag or (callable(getattr(obj, "retrieve", None)) and getattr(obj, "encoder", None) is not None)


def _top_ids(retriever: Any, questions: list[str], k: int) -> list[list[str]]:
    if hasattr(retriever, "question_encoder") and hasattr(retriever, "retriever"):  # a RAGSequence
        k = _clamp(k, retriever)
        embeddings = retriever.question_encoder.encode(questions)  # (B, D), eval mode, no gradient
        return retriever.retriever.search(embeddings, k).ids
    return retriever.retrieve(questions, _clamp(k, retriever)).ids


def _clamp(k: int, retriever: Any) -> int:
    try:
        return min(k, len(retriever.index))
    except (AttributeError, TypeError):
        return k


def round_trip_hits(
    retriever: Any, questions: Sequence[str], source_ids: Sequence[str], k: int, batch_size: int = 64
) -> list[bool]:
    """Whether each question's source passage is in the retriever's top-k for it.

    Args:
        retriever: A `RAGSequence` (its question encoder and retriever) or a `Retriever` with
            an encoder. Used frozen: encoders run in eval mode without gradient.
        questions: The questions.
        source_ids: The id of each question's source passage.
        k: How many passages to look at.
        batch_size: Questions encoded per call.

    Returns:
        One flag per question.
    """
    hits: list[bool] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start : start + batch_size])
        ids = _top_ids(retriever, chunk, k)
        hits += [src in row for src, row in zip(source_ids[start : start + batch_size], ids, strict=True)]
    return hits


def check_question(question: str, answer: str, passage_text: str, filters: QAFilters) -> str | None:
    """The first per-pair filter `question`/`answer` fails (a report key), or None when it passes.

    Dedupe and the round trip look at the whole set and run afterwards.
    """
    if len(question) > filters.max_question_chars:
        return "over_long"
    if filters.answer_in_passage and not contains_tokens(passage_text, answer):
        return "answer_not_in_passage"
    if filters.question_without_answer and contains_tokens(question, answer):
        return "question_contains_answer"
    return None
