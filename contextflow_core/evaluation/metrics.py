"""Answer and retrieval metrics as pure functions of strings and id lists.

Boundary: no models, no tensors, no I/O. Every score is a fraction in [0, 1]
(multiply by 100 for the percentages SQuAD papers print). Answer metrics follow the
official SQuAD v1.1 evaluation script (normalisation, exact match, token F1, max over
ground truths), except that two answers that are both empty after normalisation get
F1 1.0 (the SQuAD v2.0 convention) instead of 0.0.

Shapes: B questions, K retrieved ids per question.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

GroundTruths = str | Sequence[str]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Normalises an answer the SQuAD way.

    Lower-cases, removes punctuation, removes the articles "a", "an", "the", and
    collapses whitespace.

    Args:
        s: Raw answer text.

    Returns:
        The normalised text.

    Example:
        >>> normalize_answer("  The Blue-Salt, of  Quenia! ")
        'bluesalt of quenia'
    """
    s = s.lower().translate(_PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_list(ground_truths: GroundTruths) -> list[str]:
    truths = [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)
    if not truths:
        raise ValueError("ground_truths is empty; give at least one reference answer")
    return truths


def exact_match(prediction: str, ground_truths: GroundTruths) -> float:
    """Exact match after `normalize_answer`, max over ground truths.

    Args:
        prediction: The predicted answer.
        ground_truths: One reference answer or a non-empty list of aliases.

    Returns:
        1.0 if the prediction matches any reference, else 0.0.

    Example:
        >>> exact_match("the Heron.", ["egret", "heron"])
        1.0
    """
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(t)) for t in _as_list(ground_truths))


def _token_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    if not pred_tokens or not true_tokens:
        return float(pred_tokens == true_tokens)
    common = sum((Counter(pred_tokens) & Counter(true_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, ground_truths: GroundTruths) -> float:
    """Token-level F1 after `normalize_answer`, max over ground truths.

    F1 = 2PR / (P + R) with P = shared tokens / prediction tokens and
    R = shared tokens / reference tokens (multiset overlap).

    Args:
        prediction: The predicted answer.
        ground_truths: One reference answer or a non-empty list of aliases.

    Returns:
        The best F1 in [0, 1].

    Example:
        >>> round(f1_score("the blue salt", "blue salt exports"), 4)
        0.8
    """
    return max(_token_f1(prediction, t) for t in _as_list(ground_truths))


def qa_metrics(predictions: Sequence[str], references: Sequence[GroundTruths]) -> dict[str, float]:
    """Mean exact match and F1 over a set of questions, as fractions in [0, 1].

    Args:
        predictions: (B,) predicted answers.
        references: (B,) reference answers, each a string or a list of aliases.

    Returns:
        ``{"exact_match": mean EM, "f1": mean F1}``; both NaN when B == 0.

    Raises:
        ValueError: The two sequences differ in length.

    Example:
        >>> qa_metrics(["heron", "blue salt"], ["heron", ["blue salt exports"]])
        {'exact_match': 0.5, 'f1': 0.9}
    """
    _check_same_length(predictions, references, "predictions", "references")
    if not predictions:
        return {"exact_match": math.nan, "f1": math.nan}
    n = len(predictions)
    em = sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n
    f1 = sum(f1_score(p, r) for p, r in zip(predictions, references, strict=True)) / n
    return {"exact_match": em, "f1": f1}


def _check_same_length(a: Sequence, b: Sequence, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} differ in length: {len(a)} vs {len(b)}")


def _check_k(k: int | None) -> None:
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive int; got {k!r}")


def _first_gold_rank(retrieved: Sequence[str], gold: set[str], k: int | None) -> int | None:
    """1-based rank of the first gold id within the top k, or None."""
    for rank, pid in enumerate(retrieved[:k], start=1):
        if pid in gold:
            return rank
    return None


def recall_at_k(retrieved_ids: Sequence[Sequence[str]], gold_ids: Sequence[Sequence[str]], k: int) -> float:
    """Fraction of questions with at least one gold id among the top k retrieved.

    Questions with no gold ids are skipped (they cannot be scored).

    Args:
        retrieved_ids: (B, K) retrieved passage ids per question, best first.
        gold_ids: (B, *) gold passage ids per question (may be empty).
        k: Cut-off, a positive int (values above K use all K).

    Returns:
        Recall@k in [0, 1], or NaN if no question has a gold id.

    Example:
        >>> recall_at_k([["a", "b"], ["c", "d"]], [["b"], ["x"]], k=2)
        0.5
    """
    _check_same_length(retrieved_ids, gold_ids, "retrieved_ids", "gold_ids")
    _check_k(k)
    hits = [_first_gold_rank(r, set(g), k) is not None for r, g in zip(retrieved_ids, gold_ids, strict=True) if g]
    return sum(hits) / len(hits) if hits else math.nan


def mrr(retrieved_ids: Sequence[Sequence[str]], gold_ids: Sequence[Sequence[str]], k: int | None = None) -> float:
    """Mean reciprocal rank of the first gold id (0 when it is not in the top k).

    Questions with no gold ids are skipped.

    Args:
        retrieved_ids: (B, K) retrieved passage ids per question, best first.
        gold_ids: (B, *) gold passage ids per question (may be empty).
        k: Optional cut-off; None ranks the whole retrieved list.

    Returns:
        MRR@k in [0, 1], or NaN if no question has a gold id.

    Example:
        >>> mrr([["a", "b"], ["c", "d"]], [["b"], ["c"]])
        0.75
    """
    _check_same_length(retrieved_ids, gold_ids, "retrieved_ids", "gold_ids")
    _check_k(k)
    ranks = [_first_gold_rank(r, set(g), k) for r, g in zip(retrieved_ids, gold_ids, strict=True) if g]
    if not ranks:
        return math.nan
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)
