"""LangChain adapters for ContextFlow (install with ``pip install 'contextflow[langchain]'``).

Thin wrappers: conversion to and from LangChain types, delegation to `contextflow_core`.

- `ContextFlowRetriever`: the trained question encoder + index as a `BaseRetriever`.
- `ChatContextFlow` / `ContextFlowLLM`: the generator alone as a chat model / LLM.
- `ContextFlowRAG`: RAG-Sequence answers as a Runnable (question -> answer + source documents).
- `finetune_from_vectorstore`: export a vector store, train jointly, get all of the above back
  (``mode="in_place"``: train against the store as it is, no copy).
- `ContextFlowEmbeddings`: the trained query side (documents: the frozen passage encoder) for
  the store's own ``as_retriever()``.
- `backend_from_vectorstore`: a LangChain store as a ContextFlow store backend.
- `export_documents` / `register_exporter`: documents and ids out of a vector store.

Names are imported on first use, so ``import contextflow_integrations.langchain`` is
cheap and fails with an install hint only when LangChain is missing.

Example:
    >>> from contextflow_integrations.langchain import finetune_from_vectorstore  # doctest: +SKIP
    >>> result = finetune_from_vectorstore(store, "qa.jsonl")  # doctest: +SKIP
    >>> chain = result.retriever | format_docs | prompt | result.chat_model() | StrOutputParser()  # doctest: +SKIP
"""

from __future__ import annotations

from contextflow_integrations import lazy_exports

_EXPORTS = {
    "ContextFlowRetriever": "retriever",
    "passage_to_document": "retriever",
    "ChatContextFlow": "chat_model",
    "ContextFlowLLM": "chat_model",
    "ContextFlowRAG": "rag_runnable",
    "RAGQuestion": "rag_runnable",
    "RAGResult": "rag_runnable",
    "EXPORTERS": "export",
    "export_documents": "export",
    "register_exporter": "export",
    "documents_to_passages": "export",
    "FinetuneResult": "finetune",
    "finetune_from_vectorstore": "finetune",
    "rag_from_vectorstore": "finetune",
    "ContextFlowEmbeddings": "embeddings",
    "backend_from_vectorstore": "store_backend",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, "langchain_core", "pip install 'contextflow[langchain]'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
