"""Plain data types shared by every layer (no torch modules, no I/O).

Shapes used below: B questions, K passages per question, D embedding size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text.

    Attributes:
        id: Stable string id, unique inside a `DocumentIndex`.
        text: The passage body that goes into the prompt.
        title: Optional title, rendered before the text by the prompt template.
        metadata: Free JSON-serialisable metadata carried through to adapters.
    """

    id: str
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Retrieved:
    """Top-K search result for a batch of queries.

    Attributes:
        ids: (B, K) passage ids, best first.
        scores: (B, K) inner-product scores as computed by the index (no gradient).
        embeddings: (B, K, D) stored passage embeddings, so the model can recompute
            scores from a live question embedding with gradient.
        passages: (B, K) the passages themselves.
    """

    ids: list[list[str]]
    scores: torch.Tensor
    embeddings: torch.Tensor
    passages: list[list[Passage]]


@dataclass
class RagOutput:
    """Result of a RAG-Sequence forward pass.

    Attributes:
        loss: scalar mean negative marginal log-likelihood (None without answers).
        doc_logprobs: (B, K) log p_eta(z_k | x).
        seq_logprobs: (B, K) log p_theta(y | f(x, z_k)) (None without answers).
        passages: (B, K) retrieved passages.
        num_answer_tokens: (B,) answer tokens (EOS included) per question.
    """

    loss: torch.Tensor | None
    doc_logprobs: torch.Tensor
    seq_logprobs: torch.Tensor | None
    passages: list[list[Passage]]
    num_answer_tokens: torch.Tensor | None = None


@dataclass
class RagAnswer:
    """One generated answer.

    Attributes:
        text: The answer text (never the prompt).
        sources: (passage, posterior weight p(z | x, y)) pairs, highest weight first.
        score: log p(y | x) under the decoding mode's marginalisation.
    """

    text: str
    sources: list[tuple[Passage, float]]
    score: float
