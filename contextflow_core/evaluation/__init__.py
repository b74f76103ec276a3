"""Evaluation: answer and retrieval metrics (pure functions, fractions in [0, 1])."""

from contextflow_core.evaluation.metrics import (
    exact_match,
    f1_score,
    mrr,
    normalize_answer,
    qa_metrics,
    recall_at_k,
)

__all__ = [
    "exact_match",
    "f1_score",
    "mrr",
    "normalize_answer",
    "qa_metrics",
    "recall_at_k",
]

from contextflow_core.evaluation.evaluate import evaluate  # noqa: E402

__all__ += ["evaluate"]
