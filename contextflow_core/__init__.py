"""ContextFlow core: jointly trained RAG-Sequence for decoder-only LLMs.

No LangChain or LlamaIndex import ever happens here; adapters live in
`contextflow_integrations`.
"""

from contextflow_core.config import PromptConfig, RagConfig
from contextflow_core.models import (
    TextEncoder,
    default_generator,
    default_question_encoder,
    load_encoder,
    load_generator,
)
from contextflow_core.prompts import PromptBuilder
from contextflow_core.rag import RAGSequence
from contextflow_core.rag_token import RAGToken
from contextflow_core.retrieval import (
    DocumentIndex,
    InMemoryBackend,
    Retriever,
    StoreHits,
    StoreRows,
    VectorStoreBackend,
    check_embedding_space,
    refresh_store,
)
from contextflow_core.serving import RequestBatcher
from contextflow_core.types import Passage, RagAnswer, RagOutput, Retrieved

__version__ = "0.1.0"

__all__ = [
    "DocumentIndex",
    "InMemoryBackend",
    "Passage",
    "PromptBuilder",
    "PromptConfig",
    "RAGSequence",
    "RAGToken",
    "RagAnswer",
    "RagConfig",
    "RagOutput",
    "RequestBatcher",
    "Retrieved",
    "Retriever",
    "StoreHits",
    "StoreRows",
    "TextEncoder",
    "VectorStoreBackend",
    "__version__",
    "check_embedding_space",
    "default_generator",
    "default_question_encoder",
    "load_encoder",
    "load_generator",
    "refresh_store",
]
