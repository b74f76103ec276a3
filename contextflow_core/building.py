"""Build a RAGSequence over a passage collection from a model, its parts, or the embedded defaults.

Boundary: assembly only (the adapters' fine-tune helpers and the CLI call it);
no training, no I/O. Passage metadata is made JSON-safe here (`metadata.json_metadata`),
so data a store holds is converted, or refused, before any training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import PromptConfig, RagConfig
from .metadata import json_safe_passages
from .rag import RAGSequence
from .retrieval import DocumentIndex
from .types import Passage


def _components(model: RAGSequence | None, encoder: Any, generator: Any, tokenizer: Any) -> tuple:
    """(question encoder, generator, tokenizer, prompt, rag config) from `model`, the parts or the defaults."""
    if model is not None:
        given = [
            n for n, v in (("encoder", encoder), ("generator", generator), ("tokenizer", tokenizer)) if v is not None
        ]
        if given:
            raise ValueError(f"model, {', '.join(given)}: pass a RAGSequence or its parts, not both")
        if not isinstance(model, RAGSequence):
            raise ValueError(
                f"model: expected a RAGSequence (or None for the embedded defaults), got {type(model).__name__}"
            )
        return model.question_encoder, model.generator, model.generator_tokenizer, model.prompt_config, model.config
    if (generator is None) != (tokenizer is None):
        raise ValueError(
            "generator, tokenizer: expected both (a HF causal LM and its tokenizer) or neither, "
            f"got only {'generator' if generator is not None else 'tokenizer'}"
        )
    if encoder is None:
        from .models import default_question_encoder

        encoder = default_question_encoder()
    if generator is None:
        from .models import default_generator

        generator, tokenizer = default_generator()
    return encoder, generator, tokenizer, None, None


def build_rag(
    passages: Sequence[Passage] | None = None,
    *,
    store: Any = None,
    title_key: str = "title",
    store_check: bool = True,
    model: RAGSequence | None = None,
    encoder: Any = None,
    generator: Any = None,
    tokenizer: Any = None,
    num_docs: int | None = None,
    prompt: PromptConfig | None = None,
    rag_config: RagConfig | None = None,
    index_factory: str = "Flat",
) -> RAGSequence:
    """A RAGSequence over `passages` (indexed with the question encoder) or over a vector `store` as it is.

    Args:
        passages: The collection to index; their metadata is converted by
            `contextflow_core.metadata.json_metadata` (dates to ISO strings, tuples to lists, ...).
        store: Instead of `passages`: a `VectorStoreBackend` to train and serve against in place
            (nothing is copied or re-embedded; the encoder must be the one that embedded it).
        title_key: With `store`: the metadata key holding passage titles.
        store_check: With `store`: run the embedding-space check (see `RAGSequence`).
        model: Reuse this model's encoder, generator, prompt and config (its index is not used).
        encoder, generator, tokenizer: Parts to use instead; missing ones are the embedded defaults.
        num_docs: K; None: the config's, capped at the collection size.
        prompt, rag_config: Override the model's (or the defaults).
        index_factory: FAISS factory string for the new index.

    Raises:
        ValueError: Metadata that JSON cannot hold (names the passage id and key), checked
            before any model is loaded; conflicting model arguments.
    """
    if (passages is None) == (store is None):
        raise ValueError(
            "passages, store: expected exactly one (passages to index, or a store backend to use "
            f"in place), got {'both' if store is not None else 'neither'}"
        )
    if store is not None:
        return _build_over_store(
            store, title_key, store_check, model, encoder, generator, tokenizer, num_docs, prompt, rag_config
        )
    assert passages is not None  # exactly one of passages / store, checked above
    passages = json_safe_passages(passages)
    encoder, generator, tokenizer, model_prompt, model_config = _components(model, encoder, generator, tokenizer)
    index = DocumentIndex.from_passages(passages, encoder, index_factory=index_factory, show_progress=False)
    config = rag_config or model_config or RagConfig()
    k = num_docs if num_docs is not None else min(config.num_docs, len(index))
    return RAGSequence(encoder, index, tokenizer, generator, prompt=prompt or model_prompt, config=config, num_docs=k)


def _build_over_store(
    store, title_key, store_check, model, encoder, generator, tokenizer, num_docs, prompt, rag_config
) -> RAGSequence:
    """`build_rag` over a store backend: a store-backed Retriever, the same parts."""
    from .retrieval import Retriever
    from .retrieval.store import is_backend

    if not is_backend(store):
        raise ValueError(
            f"store: expected a vector-store backend (search(query_vectors, k), count(), dim, name; "
            f"see contextflow_core.retrieval.store), got {type(store).__name__}"
        )
    retriever = Retriever(store, title_key=title_key)  # bad title_key / dim refused before models load
    encoder, generator, tokenizer, model_prompt, model_config = _components(model, encoder, generator, tokenizer)
    config = rag_config or model_config or RagConfig()
    k = num_docs if num_docs is not None else min(config.num_docs, len(retriever.index))
    return RAGSequence(
        encoder,
        retriever,
        tokenizer,
        generator,
        prompt=prompt or model_prompt,
        config=config,
        num_docs=k,
        store_check=store_check,
    )
