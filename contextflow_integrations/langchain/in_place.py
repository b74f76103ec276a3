"""`finetune_from_vectorstore(..., mode="in_place")`: train against the store as it is, no copy.

Boundary: glue only. The store becomes a `VectorStoreBackend` (`store_backend.py`);
the model is built over it with `contextflow_core.building.build_rag(store=...)`,
which keeps a frozen copy of the starting encoder as the passage side and checks
the embedding space (stored vectors == that encoder's embeddings of the stored
texts); training moves the question side (and the generator) only, so the
store's vectors stay valid and nothing is re-embedded. The result carries
`ContextFlowEmbeddings` for the unchanged store's own retriever.

Without QA pairs, the questions are written from a bounded, seeded sample of the
store's rows, read through the backend's ``iter_rows`` (no copy of the store;
`contextflow_core.data.qa_store`): ``qa_options={"sample": n}`` rows, by default at
most `contextflow_core.data.qa_store.DEFAULT_STORE_SAMPLE` (1000) rows.

The question encoder starts from, in order: `model`'s, `encoder`, the store's own
embeddings object when it is a sentence-transformers / HuggingFace model
(`stores.encoder_from_embeddings`, a copy), else the embedded MiniLM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contextflow_core.building import build_rag
from contextflow_core.config import PromptConfig, RagConfig, TrainConfig
from contextflow_core.data.qa_store import require_iter_rows
from contextflow_core.training import make_dataloader, train_rag

from .embeddings import ContextFlowEmbeddings
from .rag_runnable import ContextFlowRAG
from .retriever import ContextFlowRetriever
from .store_backend import backend_from_vectorstore, store_embeddings

MODES = ("copy", "in_place")
# Arguments of the copy path that select or index exported documents: refused in place.
COPY_ONLY = {"documents": None, "ids": None, "filter": None, "index_factory": "Flat"}


def check_mode(mode: Any) -> str:
    """`mode` if it is one of `MODES`, else a ValueError naming the choices."""
    if mode not in MODES:
        raise ValueError(
            f"mode: expected one of {list(MODES)} ('copy' exports and re-embeds the documents, "
            f"'in_place' trains against the store as it is), got {mode!r}"
        )
    return mode


def refuse_copy_only(**given: Any) -> None:
    """Raise naming the copy-path arguments given a non-default value with mode='in_place'."""
    bad = [name for name, value in given.items() if value is not COPY_ONLY[name] and value != COPY_ONLY[name]]
    if bad:
        raise ValueError(
            f"{', '.join(bad)}: only apply to mode='copy' (they choose or index exported "
            "documents); mode='in_place' trains on every row of the store as it is. Drop them, or "
            "use mode='copy'"
        )


def starting_encoder(store: Any, model: Any, encoder: Any) -> Any:
    """The question encoder to start from: None (take the model's / given one), the store's own model, or None."""
    if model is not None or encoder is not None:
        return encoder
    from contextflow_integrations.stores.embedding_models import _sentence_transformer, encoder_from_embeddings

    embeddings = store_embeddings(store)
    if embeddings is not None and _sentence_transformer(embeddings) is not None:
        return encoder_from_embeddings(embeddings)
    return None  # build_rag takes the embedded default


def finetune_in_place(
    vectorstore: Any,
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
    k: int = 4,
    prompt: PromptConfig | None = None,
    rag_config: RagConfig | None = None,
    title_key: str | None = "title",
    max_new_tokens: int = 64,
    store_check: bool = True,
    make_qa: Callable[[Any], Any] | None = None,
) -> Any:
    """Train over `vectorstore`'s backend; a `FinetuneResult` with the usual parts plus `embeddings`.

    Args:
        vectorstore: A LangChain store `backend_from_vectorstore` maps, or a `VectorStoreBackend`.
        examples: Parsed training `QAExample`s; None: written by `make_qa`.
        val_examples: Validation examples (or None).
        model, encoder, generator, tokenizer: As in `finetune_from_vectorstore`.
        config: The `TrainConfig`.
        batch_size, num_docs, k, prompt, rag_config, title_key, max_new_tokens: As there.
        store_check: Run the embedding-space check (default; False skips it, at your risk).
        make_qa: With ``examples=None``: ``backend -> GeneratedQA`` (e.g. a partial of
            `contextflow_core.data.qa_store.generate_store_training_qa`), run after the check.

    Raises:
        TypeError: No backend for the store's class.
        ValueError: No QA pairs and a backend without ``iter_rows``, or the store's vectors were
            not made by the starting encoder (the check's error names the model the store seems
            to need and offers mode='copy').
    """
    from .finetune import FinetuneResult  # finetune.py imports this module

    backend = backend_from_vectorstore(vectorstore)
    if examples is None:
        require_iter_rows(backend, "vectorstore")  # before any slow work
    start = starting_encoder(vectorstore, model, encoder)
    rag = build_rag(
        store=backend,
        model=model,
        encoder=start,
        generator=generator,
        tokenizer=tokenizer,
        num_docs=num_docs,
        prompt=prompt,
        rag_config=rag_config,
        title_key=title_key or "title",
        store_check=store_check,
    )
    qa = None
    if examples is None:  # documents only: questions from the store's rows
        assert make_qa is not None  # finetune_from_vectorstore passes it whenever examples is None
        qa = make_qa(backend)
        examples, val_examples = qa.train.examples, (qa.val.examples if qa.val is not None else val_examples)
    train = make_dataloader(examples, batch_size=batch_size, shuffle=True, seed=config.seed)
    val = make_dataloader(val_examples, batch_size=batch_size, shuffle=False) if val_examples else None
    history = train_rag(rag, train, val, config=config)
    return FinetuneResult(
        model=rag,
        retriever=ContextFlowRetriever(model=rag, k=min(k, backend.count())),
        chain=ContextFlowRAG(model=rag, max_new_tokens=max_new_tokens),
        history=history,
        documents=[],
        embeddings=ContextFlowEmbeddings.from_rag(rag),
        qa=qa,
    )
