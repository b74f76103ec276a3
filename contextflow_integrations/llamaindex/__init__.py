"""LlamaIndex adapters for ContextFlow (extra: ``pip install contextflow[llamaindex]``).

Thin wrappers (conversion + delegation) over `contextflow_core`:
    ContextFlowQueryEngine  RAG-Sequence answering as a `CustomQueryEngine`
                            (source nodes scored by p(z|x,y), streaming, async).
    ContextFlowRetriever    the ContextFlow index + question encoder as a `BaseRetriever`.
    ContextFlowLLM          the generator alone as a `CustomLLM`.
    finetune_from_index     pull the nodes of a LlamaIndex index, train jointly, get the above back.
    to_vector_store_index   the ContextFlow index back as a LlamaIndex `VectorStoreIndex`.
    ContextFlowEmbedding    queries by the trained question encoder, texts by the passage encoder.
    backend_from_index      a LlamaIndex index / vector store as a ContextFlow store backend
                            (what finetune_from_index(..., mode="in_place") trains against).

LlamaIndex is imported on first use of a name, so importing this package (or
`contextflow_core`) never needs it.

Example:
    >>> from contextflow_integrations.llamaindex import finetune_from_index  # doctest: +SKIP
    >>> result = finetune_from_index(vector_index, "qa.jsonl")  # doctest: +SKIP
    >>> print(result.query_engine.query("Who founded Tarsk?"))  # doctest: +SKIP
"""

from __future__ import annotations

from contextflow_integrations import lazy_exports

_EXPORTS = {
    "ContextFlowQueryEngine": "query_engine",
    "ContextFlowRetriever": "retriever",
    "ContextFlowLLM": "llm",
    "ContextFlowEmbedding": "export",
    "FinetuneResult": "finetune",
    "finetune_from_index": "finetune",
    "load_qa_pairs": "finetune",
    "node_to_passage": "export",
    "nodes_from_index": "export",
    "passage_to_node": "export",
    "to_vector_store_index": "export",
    "backend_from_index": "store_backend",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, "llama_index", "pip install 'contextflow[llamaindex]'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
