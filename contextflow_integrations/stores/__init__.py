"""Vector-store engines as ContextFlow store backends (train and serve against the store you run).

Each backend implements `contextflow_core.retrieval.store.VectorStoreBackend`:
``search(query_vectors, k)`` returns the top-k ids, "higher is better" scores,
the **stored vectors**, texts and metadata, and ``count()``, ``get(ids)``,
``iter_rows(batch_size)``, ``upsert(rows)`` read and write rows by id.

- `MilvusBackend` (``pip install 'contextflow[milvus]'``: pymilvus + milvus-lite): a
  Milvus cluster or a Milvus Lite file; atomic refresh through an alias
  (`staging`/`promote`).
- `QdrantBackend` (``qdrant-client``): a server or local mode; named vectors.
- `ChromaBackend` (``chromadb``): any Chroma collection (l2/cosine/ip spaces).
- `encoder_from_embeddings`: a store's own sentence-transformers / HuggingFace
  embeddings object as a ContextFlow `TextEncoder` (the question encoder's start).

Each engine's client is imported on first use of its backend.

Example:
    >>> from pymilvus import MilvusClient  # doctest: +SKIP
    >>> from contextflow_integrations.stores import MilvusBackend  # doctest: +SKIP
    >>> model = RAGSequence.from_defaults(MilvusBackend(MilvusClient("docs.db"), "docs"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

_EXPORTS = {
    "MilvusBackend": ("milvus", "pymilvus", "pip install 'contextflow[milvus]'"),
    "QdrantBackend": ("qdrant", "qdrant_client", "pip install qdrant-client"),
    "ChromaBackend": ("chroma", "chromadb", "pip install chromadb"),
    "encoder_from_embeddings": ("embedding_models", "transformers", "pip install transformers"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, engine, hint = _EXPORTS[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
        value = getattr(module, name)
        if module_name != "embedding_models":
            importlib.import_module(engine)  # fail here, with the hint, rather than on first search
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == engine:
            raise ImportError(f"{name} needs {engine}: {hint} (missing module {e.name!r})") from e
        raise
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
