"""LangChain retriever over a ContextFlow question encoder and DocumentIndex.

Boundary: converts a query string into the core retriever's call and its
`Passage` results into LangChain `Document`s. No prompts, no generation.
"""

from __future__ import annotations

from typing import Any

import torch
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, model_validator

from contextflow_core.types import Passage
from contextflow_core.validation import as_int, refuse_unknown

_SEARCH_KEYS = ("k",)  # search_kwargs / per-call keywords honoured


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
        search_type: Only "similarity" (top-k by inner product), as `VectorStoreRetriever`'s
            default; "mmr" and "similarity_score_threshold" are refused by name.
        search_kwargs: `VectorStoreRetriever`'s convention: ``{"k": n}`` sets `k` (any
            other key is refused).

    Unknown constructor fields and per-call keywords are errors that list the accepted ones.

    Example:
        >>> retriever = ContextFlowRetriever(model=rag, search_kwargs={"k": 3})  # doctest: +SKIP
        >>> [d.id for d in retriever.invoke("Who founded Tarsk?", k=2)]  # doctest: +SKIP
        ['p3', 'p1']
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Any = Field(repr=False)
    k: int = 4
    search_type: str = "similarity"
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        refuse_unknown(cls.__name__, data, cls.model_fields)
        search_type = data.get("search_type", "similarity")
        if search_type != "similarity":
            raise ValueError(
                f"search_type: ContextFlowRetriever ranks by similarity only (q . d), got "
                f"{search_type!r}; use search_type='similarity' or leave it out"
            )
        search = data.get("search_kwargs") or {}
        if not isinstance(search, dict):
            raise ValueError(f"search_kwargs: expected a dict such as {{'k': 4}}, got {search!r}")
        refuse_unknown(f"{cls.__name__} search_kwargs", search, _SEARCH_KEYS)
        if "k" in search:
            if "k" in data and data["k"] != search["k"]:
                raise ValueError(
                    f"k={data['k']!r} and search_kwargs={{'k': {search['k']!r}}} disagree; pass only one of them"
                )
            data = {**data, "k": search["k"]}
        if "k" in data:
            data["k"] = as_int("k", data["k"])
        return data

    @model_validator(mode="after")
    def _check(self):
        has_rag = hasattr(self.model, "question_encoder") and hasattr(self.model, "index")
        has_retriever = callable(getattr(self.model, "retrieve", None)) and getattr(self.model, "encoder", None)
        if not (has_rag or has_retriever):
            raise ValueError(
                "model: expected a RAGSequence or a contextflow Retriever with a question encoder, "
                f"got {type(self.model).__name__}"
            )
        return self

    def _retrieve(self, query: str, k: int):
        if hasattr(self.model, "question_encoder"):  # RAGSequence: its encoder, its index
            with torch.no_grad():
                return self.model.index.search(self.model.question_encoder.encode([query]), k)
        return self.model.retrieve([query], k)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        refuse_unknown(f"{type(self).__name__}.invoke", kwargs, _SEARCH_KEYS)
        k = as_int("k", kwargs.get("k", self.k))
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query: expected non-empty text, got {query!r}")
        retrieved = self._retrieve(query, k)
        scores = retrieved.scores[0].tolist()
        return [passage_to_document(p, score=float(s)) for p, s in zip(retrieved.passages[0], scores, strict=True)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
        )
