"""A store's own embedding model as a ContextFlow `TextEncoder` (the question encoder's starting point).

Boundary: conversion only, no framework import at module level. Takes what a
vector store was built with and returns a `TextEncoder` computing the same
vectors, so in-place training starts from the encoder that embedded the store
(and passes the embedding-space check). Accepted:

- a `TextEncoder` (returned as is);
- a sentence-transformers `SentenceTransformer` (Transformer + Pooling [+ Normalize]);
- a LangChain `HuggingFaceEmbeddings` (langchain-huggingface or community; its
  ``client``/``_client`` SentenceTransformer, ``encode_kwargs["normalize_embeddings"]``);
- a LlamaIndex `HuggingFaceEmbedding` (its ``_model`` SentenceTransformer, ``normalize``);
- a model name or local folder (loaded with `contextflow_core.models.load_encoder`;
  the embedded MiniLM's name loads the embedded copy, offline).

The weights are **copied**: training the returned encoder never changes the
object the store (and the user's application) embeds documents with.
"""

from __future__ import annotations

import copy
from typing import Any

from contextflow_core.models.encoders import TextEncoder

_CLIENT_ATTRS = ("client", "_client", "_model")  # LangChain (community, langchain-huggingface), LlamaIndex


def _sentence_transformer(obj: Any) -> Any | None:
    """The SentenceTransformer inside `obj` (or `obj` itself), else None."""
    candidates = [obj] + [getattr(obj, a, None) for a in _CLIENT_ATTRS]
    return next((c for c in candidates if type(c).__name__ == "SentenceTransformer"), None)


def _extra_normalize(obj: Any) -> bool:
    """Whether the wrapper normalises on top of the model (LangChain encode_kwargs, LlamaIndex normalize)."""
    kwargs = getattr(obj, "encode_kwargs", None) or {}
    return bool(kwargs.get("normalize_embeddings")) or getattr(obj, "normalize", False) is True


def _from_sentence_transformer(st: Any, name: str, normalize: bool) -> TextEncoder:
    modules = [st[i] for i in range(len(st))]
    kinds = [type(m).__name__ for m in modules]
    if not kinds or kinds[0] != "Transformer" or not set(kinds[1:]) <= {"Pooling", "Normalize"}:
        raise ValueError(
            f"embeddings: a SentenceTransformer made of {kinds} cannot become a ContextFlow encoder "
            "(supported: Transformer, Pooling, optional Normalize); pass encoder=TextEncoder(...)"
        )
    transformer = modules[0]
    pooling = "mean"
    for module in modules[1:]:
        if type(module).__name__ == "Pooling":
            mode = getattr(module, "pooling_mode", None) or module.get_pooling_mode_str()
            pooling = {"mean": "mean", "cls": "cls"}.get(str(mode).replace("_tokens", ""), "")
            if not pooling:
                raise ValueError(
                    f"embeddings: pooling mode {mode!r} has no ContextFlow equivalent "
                    "(supported: mean, cls); pass encoder=TextEncoder(...)"
                )
    body = getattr(transformer, "auto_model", None) or transformer.model
    return TextEncoder(
        copy.deepcopy(body).eval(),
        transformer.tokenizer,
        pooling=pooling,
        normalize=normalize or "Normalize" in kinds,
        max_length=int(getattr(st, "max_seq_length", None) or 256),
        name=name,
    )


def embedding_model_name(obj: Any) -> str | None:
    """The model name an embeddings object reports (``model_name``, ``model``, or its SentenceTransformer's)."""
    for attr in ("model_name", "model", "model_id", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    st = _sentence_transformer(obj)
    card = getattr(getattr(st, "model_card_data", None), "base_model", None)
    return card if isinstance(card, str) else None


def encoder_from_embeddings(embeddings: Any) -> TextEncoder:
    """A `TextEncoder` that computes what `embeddings` computes (a copy: the original stays untouched).

    Args:
        embeddings: A `TextEncoder`, a `SentenceTransformer`, a LangChain `HuggingFaceEmbeddings`,
            a LlamaIndex `HuggingFaceEmbedding`, or a model name / local folder.

    Returns:
        The encoder (eval mode), named after the model.

    Raises:
        ValueError: An object this function cannot read (the message says to pass an encoder).

    Example:
        >>> from langchain_community.embeddings import HuggingFaceEmbeddings  # doctest: +SKIP
        >>> encoder = encoder_from_embeddings(HuggingFaceEmbeddings(model_name="/models/minilm"))  # doctest: +SKIP
    """
    if isinstance(embeddings, TextEncoder):
        return embeddings
    if isinstance(embeddings, str):
        from contextflow_core.models import default_question_encoder, load_encoder
        from contextflow_core.models.defaults import ENCODER_NAME

        if embeddings in (ENCODER_NAME, ENCODER_NAME.split("/")[-1]):
            return default_question_encoder()
        return load_encoder(embeddings)
    st = _sentence_transformer(embeddings)
    if st is None:
        raise ValueError(
            f"embeddings: expected a sentence-transformers model, a HuggingFace embeddings object "
            f"(LangChain HuggingFaceEmbeddings, LlamaIndex HuggingFaceEmbedding) or a model name, "
            f"got {type(embeddings).__name__}; pass encoder=TextEncoder(...) built from the model "
            "that embedded the store"
        )
    name = embedding_model_name(embeddings) or type(embeddings).__name__
    return _from_sentence_transformer(st, name, _extra_normalize(embeddings))
