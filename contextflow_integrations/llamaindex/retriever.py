"""ContextFlowRetriever: a ContextFlow index and question encoder as a LlamaIndex retriever.

Boundary: conversion and delegation only. The question is embedded by the
question encoder (`encode`, no gradient), the DocumentIndex returns the top-k
passages, and each becomes a `NodeWithScore` (node id = passage id, score = the
inner product q . d the index ranked by). LlamaIndex's `BaseRetriever.retrieve`
wraps `_retrieve`, so callbacks and instrumentation events fire as for its own
retrievers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from contextflow_core.retrieval import Retriever
from contextflow_core.validation import as_int, refuse_unknown
from contextflow_integrations.llamaindex.export import passage_to_node

__all__ = ["ContextFlowRetriever"]

#: Names used for k elsewhere -> this retriever's name (LlamaIndex's own).
_RENAMES = {"k": "similarity_top_k", "top_k": "similarity_top_k", "num_docs": "similarity_top_k"}


def _as_core_retriever(model: Any) -> Retriever:
    """A core Retriever (index + encoder) from a RAGSequence or a Retriever with an encoder."""
    if isinstance(model, Retriever):
        if model.encoder is None:
            raise ValueError(
                "model: expected a Retriever with a question encoder, got one without; "
                "build it as Retriever(index, encoder)"
            )
        return model
    index, encoder = getattr(model, "index", None), getattr(model, "question_encoder", None)
    if index is None or encoder is None:
        raise ValueError(f"model: expected a RAGSequence or a contextflow Retriever, got {type(model).__name__}")
    return Retriever(index, encoder, k=model.config.num_docs)


class ContextFlowRetriever(BaseRetriever):
    """Top-k passages of a ContextFlow index as LlamaIndex nodes.

    Args:
        model: A RAGSequence (its index and live question encoder, so a model trained
            after this retriever was built is used as trained), or a
            `contextflow_core.retrieval.Retriever` with an encoder.
        similarity_top_k: k; None: the model's `num_docs` (or the Retriever's k). Python or
            numpy integers; `k`, `top_k` or `num_docs` are refused naming this field.
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex verbosity flag.

    Example:
        >>> retriever = ContextFlowRetriever(rag, similarity_top_k=3)  # doctest: +SKIP
        >>> [(n.node_id, n.score) for n in retriever.retrieve("Who founded Tarsk?")]  # doctest: +SKIP
        [('p3', 4.1), ('p0', 2.7), ('p5', 1.9)]
    """

    def __init__(
        self,
        model: Any,
        *,
        similarity_top_k: int | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        refuse_unknown(
            type(self).__name__, kwargs, ("model", "similarity_top_k", "callback_manager", "verbose"), _RENAMES
        )
        self._core = _as_core_retriever(model)
        k = self._core.k if similarity_top_k is None else similarity_top_k
        self.similarity_top_k = as_int("similarity_top_k", k)  # numpy ints too
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        k = min(self.similarity_top_k, len(self._core.index))  # LlamaIndex returns fewer, silently
        retrieved = self._core.retrieve([query_bundle.query_str], k)
        return [
            NodeWithScore(node=passage_to_node(p), score=float(s))
            for p, s in zip(retrieved.passages[0], retrieved.scores[0].tolist(), strict=True)
        ]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
