"""`finetune_from_index(..., mode="in_place")`: train against the index's vector store as it is, no copy.

Boundary: glue only. The index (or store) becomes a `VectorStoreBackend`
(`store_backend.py`); the model is built over it with
`contextflow_core.building.build_rag(store=...)` (a frozen copy of the starting
encoder is the passage side; the embedding space is checked); training moves the
question side and the generator only, so nothing is re-embedded. The result
carries an asymmetric `ContextFlowEmbedding` (`result.embed_model`) for the
unchanged index: ``index.as_retriever(embed_model=result.embed_model)``.

Without QA pairs, the questions are written from a bounded, seeded sample of the
store's rows, read through the backend's ``iter_rows`` (no copy;
`contextflow_core.data.qa_store`), from the nodes' plain text (a
`LlamaIndexStoreBackend` also gives the text as embedded, with metadata lines,
which the writer should not see; another backend's rows are used as stored).

The question encoder starts from, in order: `model`'s, `encoder`, the index's own
embed model when it is a sentence-transformers / HuggingFace model
(`stores.encoder_from_embeddings`, a copy), else the embedded MiniLM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contextflow_core.building import build_rag
from contextflow_core.config import PromptConfig, RagConfig, TrainConfig
from contextflow_core.data.qa_store import require_iter_rows
from contextflow_core.training import make_dataloader, train_rag
from contextflow_integrations.llamaindex.export import ContextFlowEmbedding
from contextflow_integrations.llamaindex.query_engine import ContextFlowQueryEngine
from contextflow_integrations.llamaindex.retriever import ContextFlowRetriever
from contextflow_integrations.llamaindex.store_backend import LlamaIndexStoreBackend, backend_from_index

MODES = ("copy", "in_place")


def check_mode(mode: Any, nodes: Any = None) -> str:
    """`mode` if it is one of `MODES` (and `nodes` is not given in place), else a ValueError."""
    if mode not in MODES:
        raise ValueError(
            f"mode: expected one of {list(MODES)} ('copy' pulls and re-embeds the nodes, "
            f"'in_place' trains against the index's vector store as it is), got {mode!r}"
        )
    if mode == "in_place" and nodes is not None:
        raise ValueError(
            "nodes: only applies to mode='copy' (nodes to index anew); mode='in_place' trains on "
            "the index's stored vectors. Drop nodes=, or use mode='copy'"
        )
    return mode


def starting_encoder(index: Any, model: Any, encoder: Any) -> Any:
    """The question encoder to start from: the given one, the index's own embed model, or None (default)."""
    if model is not None or encoder is not None:
        return encoder
    from contextflow_integrations.stores.embedding_models import _sentence_transformer, encoder_from_embeddings

    embed_model = getattr(index, "_embed_model", None)
    if embed_model is not None and _sentence_transformer(embed_model) is not None:
        return encoder_from_embeddings(embed_model)
    return None


def finetune_in_place(
    index_or_vector_store: Any,
    examples: list | None,
    *,
    val_examples: Any = None,
    model: Any = None,
    encoder: Any = None,
    generator: Any = None,
    tokenizer: Any = None,
    config: TrainConfig,
    batch_size: int = 4,
    num_docs: int | None = None,
    prompt: PromptConfig | None = None,
    rag_config: RagConfig | None = None,
    query_engine_kwargs: dict | None = None,
    store_check: bool = True,
    metrics: Any = None,
    make_qa: Callable[..., Any] | None = None,
) -> Any:
    """Train over the index's backend; a `FinetuneResult` with the usual parts plus `embed_model`.

    Args:
        index_or_vector_store: A `VectorStoreIndex`, a vector store whose query results carry
            embeddings, or a `VectorStoreBackend`.
        examples: Parsed training `QAExample`s; None: written by `make_qa`.
        val_examples: Validation examples (or None).
        model, encoder, generator, tokenizer, batch_size, num_docs, prompt, rag_config,
            query_engine_kwargs: As in `finetune_from_index`.
        config: The `TrainConfig`.
        store_check: Run the embedding-space check (default).
        metrics: `fn(rag, examples) -> dict | None`, retrieval metrics before/after training.
        make_qa: With ``examples=None``: ``(backend, read_rows=) -> GeneratedQA`` (a partial of
            `contextflow_core.data.qa_store.generate_store_training_qa`), run after the check.

    Raises:
        ValueError: No QA pairs and a backend without ``iter_rows``, or the stored vectors were not
            made by the starting encoder (the check's error names the model the store seems to
            need and offers mode='copy').
    """
    from contextflow_integrations.llamaindex.finetune import FinetuneResult  # finetune.py imports this module

    backend = backend_from_index(index_or_vector_store)
    if examples is None:
        require_iter_rows(backend, "index_or_vector_store")  # before any slow work
    start = starting_encoder(index_or_vector_store, model, encoder)
    rag = build_rag(
        store=backend,
        model=model,
        encoder=start,
        generator=generator,
        tokenizer=tokenizer,
        num_docs=num_docs,
        prompt=prompt,
        rag_config=rag_config,
        store_check=store_check,
    )
    qa = None
    if examples is None:  # documents only: questions from the store's rows
        assert make_qa is not None  # finetune_from_index passes it whenever examples is None
        qa = make_qa(backend, read_rows=_plain_rows(backend))
        examples, val_examples = qa.train.examples, (qa.val.examples if qa.val is not None else val_examples)
    before = metrics(rag, examples) if metrics else None
    train = make_dataloader(examples, batch_size=batch_size, shuffle=True, seed=config.seed)
    val = make_dataloader(val_examples, batch_size=batch_size, shuffle=False) if val_examples else None
    history = train_rag(rag, train, val, config=config)
    return FinetuneResult(
        model=rag,
        query_engine=ContextFlowQueryEngine(rag=rag, **(query_engine_kwargs or {})),
        retriever=ContextFlowRetriever(rag),
        history=history,
        examples=examples,
        retrieval_before=before,
        retrieval_after=metrics(rag, examples) if metrics else None,
        embed_model=ContextFlowEmbedding.from_rag(rag),
        qa=qa,
    )


def _plain_rows(backend: Any) -> Callable[[int], Any] | None:
    """A LlamaIndex backend's rows with the nodes' plain text (None: the backend's own `iter_rows`)."""
    if isinstance(backend, LlamaIndexStoreBackend):
        return lambda batch_size: backend.iter_rows(batch_size, as_embedded=False)
    return None
