"""Models: text encoders for the retriever, generator loading, embedded defaults.

Boundary: everything here builds or loads models; nothing here retrieves, builds
prompts or computes the RAG loss.
"""

from contextflow_core.models.defaults import default_generator, default_question_encoder
from contextflow_core.models.encoders import TextEncoder
from contextflow_core.models.loading import ensure_pad_token, load_encoder, load_generator

__all__ = [
    "TextEncoder",
    "default_generator",
    "default_question_encoder",
    "ensure_pad_token",
    "load_encoder",
    "load_generator",
]
