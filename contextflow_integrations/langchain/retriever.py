"""LangChain retriever over a ContextFlow question encoder and DocumentIndex.

Boundary: converts a query string into the core retriever's call and its
`Passage` results into LangChain `Document`s. No prompts, no generation.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, model_validator

from contextflow_core.types import Passage


def passage_to_document(passage: Passage, **extra: Any) -> Document:
    """A `Document` whose `id` is the passage id, with the passage's metadata, title and `extra`."""
    metadata = dict(passage.metadata)
    if passage.title is not None:
        metadata["title"] = passage.title
    metadata.update(extra)
    return Document(page_content=passage.text, id=passage.id, metadata=metadata)


class ContextFlowRetriever(BaseRetriever):
    """The (trained) ContextFlow question encoder and passage index as a LangChain retriever.

    Each `Document` has the passage id as `id`, the passage text as `page_content`, and in
    `metadata` the passage's own metadata, its `title` (when it has one) and `score`, the
    inner product q(x) . d(z) the index ranked it by (best first).

    Args:
        model: A `RAGSequence` (its question encoder and index are used) or a core
            `Retriever` built with a question encoder.
        k: Number of documents returned; `invoke(query, k=...)` overrides it per call.

    Example:
        >>> retriever = ContextFlowRetriever(model=rag, k=3)  # doctest: +SKIP
        >>> [d.id for d in retriever.invoke("Who founded Tarsk?", k=2)]  # doctest: +SKIP
        ['p3', 'p1']
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(repr=False)
    k: int = 4

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise ValueError(f"k: expected a positive integer, got {self.k!r}")
        has_rag = hasattr(self.model, "question_encoder") and hasattr(self.model, "index")
        has_retriever = callable(getattr(self.model, "retrieve", None)) and getattr(self.model, "encoder", None)
        if not (has_rag or has_retriever):
            raise ValueError(
                "model: expected a RAGSequence or a contextflow Retriever with a question encoder, "
                f"got {type(self.model).__name__}")
        return self

    def _retrieve(self, query: str, k: int):
        if hasattr(self.model, "question_encoder"):  # RAGSequence: its encoder, its index
            with torch.no_grad():
                return self.model.index.search(self.model.question_encoder.encode([query]), k)
        return self.model.retrieve([query], k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: Optional[int] = None) -> list[Document]:
        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query: expected non-empty text, got {query!r}")
        retrieved = self._retrieve(query, k)
        scores = retrieved.scores[0].tolist()
        return [passage_to_document(p, score=float(s)) for p, s in zip(retrieved.passages[0], scores)]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: Optional[int] = None) -> list[Document]:
        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), k=k)
