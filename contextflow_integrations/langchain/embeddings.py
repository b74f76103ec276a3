"""The trained query side handed back to LangChain as an `Embeddings` object.

Boundary: conversion only. RAG-Sequence training moves the question encoder;
with a frozen passage encoder the vectors already in the user's store stay
valid. `ContextFlowEmbeddings` embeds queries with the trained question encoder
and documents with the frozen passage encoder, so the **unchanged** store's
``as_retriever()`` ranks with the trained model, and documents added later land
in the same space as the stored ones.

Example:
    >>> result = finetune_from_vectorstore(store, qa, mode="in_place")  # doctest: +SKIP
    >>> store.embeddings = result.embeddings  # or build the store's retriever with it  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings

__all__ = ["ContextFlowEmbeddings"]


def _check_encoder(encoder: Any, arg: str) -> Any:
    if not hasattr(encoder, "encode"):
        raise ValueError(
            f"{arg}: expected an encoder with encode(texts) -> (N, D) (a TextEncoder), got {type(encoder).__name__}"
        )
    return encoder


class ContextFlowEmbeddings(Embeddings):
    """Asymmetric LangChain embeddings: queries by the question encoder, documents by the passage encoder.

    Args:
        question_encoder: Embeds queries (`embed_query`): the trained ContextFlow question encoder.
        passage_encoder: Embeds documents (`embed_documents`): the frozen encoder that
            produced the store's vectors; None: the question encoder (one shared space).
        batch_size: Texts per encoder batch in `embed_documents`.

    Raises:
        ValueError: An encoder without ``encode``, different dimensions, or a bad batch size.

    Example:
        >>> embeddings = ContextFlowEmbeddings.from_rag(model)  # doctest: +SKIP
        >>> store = InMemoryVectorStore(embeddings)  # doctest: +SKIP
    """

    def __init__(self, question_encoder: Any, passage_encoder: Any | None = None, *, batch_size: int = 64) -> None:
        self.question_encoder = _check_encoder(question_encoder, "question_encoder")
        self.passage_encoder = _check_encoder(
            passage_encoder if passage_encoder is not None else question_encoder, "passage_encoder"
        )
        dims = (getattr(self.question_encoder, "dim", None), getattr(self.passage_encoder, "dim", None))
        if all(isinstance(d, int) for d in dims) and dims[0] != dims[1]:
            raise ValueError(f"passage_encoder: expected dimension {dims[0]} (the question encoder's), got {dims[1]}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.model_name = str(getattr(self.question_encoder, "name", None) or type(self.question_encoder).__name__)

    @classmethod
    def from_rag(cls, model: Any, **kwargs: Any) -> ContextFlowEmbeddings:
        """From a RAGSequence: its question encoder and its (frozen) context encoder.

        Args:
            model: A `RAGSequence`.
            **kwargs: `batch_size`.
        """
        if not hasattr(model, "question_encoder"):
            raise ValueError(f"model: expected a RAGSequence, got {type(model).__name__}")
        return cls(model.question_encoder, getattr(model, "context_encoder", None), **kwargs)

    def embed_query(self, text: str) -> list[float]:
        """The trained question encoder's embedding of `text`."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        return self.question_encoder.encode([text]).float()[0].tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """The passage encoder's embeddings of `texts` (the space of the store's vectors)."""
        if isinstance(texts, str):
            raise ValueError("texts: expected a list of strings, got a single string; wrap it in a list")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"texts: expected strings, got {type(texts[bad]).__name__} at position {bad}")
        if not texts:
            return []
        return self.passage_encoder.encode(texts, batch_size=self.batch_size).float().tolist()

    async def aembed_query(self, text: str) -> list[float]:
        """`embed_query` in a worker thread (the event loop stays free)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_query, text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """`embed_documents` in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_documents, texts)

    def __repr__(self) -> str:
        shared = self.passage_encoder is self.question_encoder
        return f"ContextFlowEmbeddings(model_name={self.model_name!r}, shared_encoder={shared})"
