"""ContextFlow core: jointly trained RAG-Sequence for decoder-only LLMs.

No LangChain or LlamaIndex import ever happens here; adapters live in
`contextflow_integrations`.
"""
from contextflow_core.config import PromptConfig, RagConfig
from contextflow_core.models import (
    TextEncoder, default_generator, default_question_encoder, load_encoder, load_generator,
)
from contextflow_core.prompts import PromptBuilder
from contextflow_core.rag import RAGSequence
from contextflow_core.rag_token import RAGToken
from contextflow_core.retrieval import DocumentIndex, Retriever
from contextflow_core.types import Passage, RagAnswer, RagOutput, Retrieved

__version__ = "0.1.0"

__all__ = [
    "DocumentIndex",
    "Passage",
    "PromptBuilder",
    "PromptConfig",
    "RAGSequence",
    "RAGToken",
    "RagAnswer",
    "RagConfig",
    "RagOutput",
    "Retrieved",
    "Retriever",
    "TextEncoder",
    "__version__",
    "default_generator",
    "default_question_encoder",
    "load_encoder",
    "load_generator",
]
