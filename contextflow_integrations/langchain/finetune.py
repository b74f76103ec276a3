"""Fine-tune ContextFlow on the documents of a LangChain vector store.

Boundary: glue only. Documents come out of the store (`export.py`), become a
`DocumentIndex` encoded with the model's question encoder, the model trains with
`contextflow_core.training.train_rag`, and the result is wrapped in the
LangChain adapters. The store itself is never modified.

Without QA pairs, the training questions are written from the documents first
(`contextflow_core.data.generate_qa`; the writer is `question_llm`), and a tenth of the
documents' questions is held out for validation. With ``mode="in_place"`` they are
written from a bounded, seeded sample of the store's own rows, read through its backend's
``iter_rows`` (`contextflow_core.data.qa_store`; at most 1000 rows unless
``qa_options={"sample": n}``).

Example:
    >>> result = finetune_from_vectorstore(store, question_llm="cloze")  # doctest: +SKIP
    >>> print(result.qa_report.format())  # what was written, kept and dropped  # doctest: +SKIP
    >>> result.qa.all.save_jsonl("generated_qa.jsonl")  # doctest: +SKIP
    >>> result = finetune_from_vectorstore(store, [("Who founded Tarsk?", "Ilo")],
    ...                                    train_config=TrainConfig(num_epochs=2))  # doctest: +SKIP
    >>> result.chain.invoke("Who founded Tarsk?")["answer"]  # doctest: +SKIP
    'Ilo'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from langchain_core.documents import Document

from contextflow_core.building import build_rag
from contextflow_core.config import PromptConfig, RagConfig, TrainConfig
from contextflow_core.data.qa_store import check_store_qa_options, generate_store_training_qa
from contextflow_core.data.qa_training import GeneratedQA, check_generation_arguments, generate_training_qa
from contextflow_core.data.readers import load_qa
from contextflow_core.metadata import merge_duplicates
from contextflow_core.rag import RAGSequence
from contextflow_core.training import TrainHistory, make_dataloader, train_rag

from . import in_place as _in_place
from .chat_model import ChatContextFlow
from .embeddings import ContextFlowEmbeddings
from .export import documents_to_passages, export_documents
from .qa_writer import as_question_writer
from .rag_runnable import ContextFlowRAG
from .retriever import ContextFlowRetriever, passage_to_document


@dataclass
class FinetuneResult:
    """What `finetune_from_vectorstore` returns.

    Attributes:
        model: The trained `RAGSequence` (its index holds the store's documents).
        retriever: `ContextFlowRetriever` over the trained question encoder and the index.
        chain: `ContextFlowRAG` answering with the trained model (question -> answer + sources).
        history: The `TrainHistory` of `train_rag` (per-step losses, evaluations, stop reason).
        documents: The documents that were indexed, each with its id (as the index holds them):
            metadata converted to JSON, merged duplicates with ``metadata["duplicate_ids"]``;
            empty with ``mode="in_place"`` (the store holds them).
        embeddings: `ContextFlowEmbeddings` (queries: the trained question encoder, documents:
            the frozen passage encoder) for the store's own ``as_retriever()``.
        qa: With no `qa_pairs`: the generated pairs (``qa.all``, with ``qa.all.report``), the
            part trained on (``qa.train``) and the held-out part (``qa.val``); None otherwise.
    """

    model: RAGSequence
    retriever: ContextFlowRetriever
    chain: ContextFlowRAG
    history: TrainHistory
    documents: list[Document] = field(repr=False)
    embeddings: Any | None = field(default=None, repr=False)
    qa: GeneratedQA | None = field(default=None, repr=False)

    @property
    def qa_report(self) -> Any:
        """The `QAReport` of the generated pairs (None when `qa_pairs` were given)."""
        return self.qa.all.report if self.qa is not None else None

    def chat_model(self, **kwargs: Any) -> ChatContextFlow:
        """The trained generator alone as a `ChatContextFlow` (kwargs: its fields, e.g. max_tokens)."""
        return ChatContextFlow.from_rag(self.model, **kwargs)

    def save(self, directory: Any) -> None:
        """Save the trained model and its index (`RAGSequence.save_pretrained`)."""
        self.model.save_pretrained(directory)


def _collect_documents(
    vectorstore: Any, documents: Sequence[Document] | None, ids: Sequence[str] | None, filter: Any = None
) -> tuple[list[Document], Sequence[str] | None]:
    """The documents to index, and explicit ids for them (only with `documents=`)."""
    if vectorstore is not None and documents is not None:
        raise ValueError(
            "vectorstore, documents: expected one source of documents, got both; "
            "pass documents=None to export the store, or vectorstore=None"
        )
    if documents is not None:
        if filter is not None:
            raise ValueError(
                "filter: applies to a vector store's documents, got it with documents=[...]; "
                "select the documents yourself, or pass the store with filter="
            )
        if isinstance(documents, (str, Document)):
            raise ValueError(f"documents: expected a list of Documents, got a single {type(documents).__name__}")
        documents = list(documents)
        if not documents:
            raise ValueError("documents: expected at least one Document, got an empty list")
        return documents, ids
    if vectorstore is None:
        raise ValueError("vectorstore: expected a LangChain vector store (or documents=[...]), got None")
    return export_documents(vectorstore, ids, filter=filter), None


def rag_from_vectorstore(
    vectorstore: Any = None,
    *,
    model: RAGSequence | None = None,
    encoder: Any = None,
    generator: Any = None,
    tokenizer: Any = None,
    documents: Sequence[Document] | None = None,
    ids: Sequence[str] | None = None,
    num_docs: int | None = None,
    prompt: PromptConfig | None = None,
    rag_config: RagConfig | None = None,
    title_key: str | None = "title",
    index_factory: str = "Flat",
    filter: Any = None,
    dedupe: bool = True,
) -> RAGSequence:
    """An untrained `RAGSequence` over the documents of `vectorstore` (see `finetune_from_vectorstore`)."""
    if not isinstance(dedupe, bool):
        raise ValueError(f"dedupe: expected True or False, got {dedupe!r}")
    docs, doc_ids = _collect_documents(vectorstore, documents, ids, filter)
    passages = documents_to_passages(docs, doc_ids, title_key)
    if dedupe:
        passages = merge_duplicates(passages)
    return build_rag(
        passages,
        model=model,
        encoder=encoder,
        generator=generator,
        tokenizer=tokenizer,
        num_docs=num_docs,
        prompt=prompt,
        rag_config=rag_config,
        index_factory=index_factory,
    )


def finetune_from_vectorstore(
    vectorstore: Any,
    qa_pairs: Any = None,
    *,
    model: RAGSequence | None = None,
    encoder: Any = None,
    generator: Any = None,
    tokenizer: Any = None,
    train_config: TrainConfig | None = None,
    documents: Sequence[Document] | None = None,
    ids: Sequence[str] | None = None,
    val_pairs: Any = None,
    batch_size: int = 4,
    num_docs: int | None = None,
    k: int = 4,
    prompt: PromptConfig | None = None,
    rag_config: RagConfig | None = None,
    title_key: str | None = "title",
    index_factory: str = "Flat",
    max_new_tokens: int = 64,
    filter: Any = None,
    dedupe: bool = True,
    mode: str = "copy",
    store_check: bool = True,
    question_llm: Any = None,
    qa_options: dict | None = None,
    val_fraction: float | None = None,
) -> FinetuneResult:
    """Index a vector store's documents with ContextFlow, train jointly on QA pairs, return LangChain parts.

    The models come from `model` (a `RAGSequence`; its encoder, generator, prompt and
    config are reused and trained in place, its index is replaced), or from
    `encoder`/`generator`/`tokenizer`, or by default from the embedded models
    (`default_question_encoder()`, `default_generator()`). The question encoder also
    encodes the documents (one shared embedding space).

    Args:
        vectorstore: A LangChain vector store (`InMemoryVectorStore`, community `FAISS`,
            `Chroma`, `QdrantVectorStore`/`Qdrant`, or any store with `get_by_ids` when
            `ids` is given); None when `documents` is given.
        qa_pairs: Training questions and answers: (question, answer) tuples, dicts with
            "question"/"answer", or a JSONL/JSON/CSV path (anything `load_qa` reads). None
            (the default): generate them from the indexed documents with
            `contextflow_core.data.generate_qa` (writer: `question_llm`), hold out
            `val_fraction` of them by document for validation, and keep them in ``result.qa``.
            With mode="in_place" the documents are the store's rows, read through the
            backend's ``iter_rows`` (refused by name without it) and sampled as it goes
            (reservoir sampling seeded by the generation seed, memory bounded by the sample):
            ``qa_options={"sample": n}`` rows; without ``"sample"`` every row of a store of
            up to 1000 rows, else 1000 of them with a warning; ``{"sample": None}``: every row.
        model: A `RAGSequence` whose parts are trained.
        encoder: Question encoder (`TextEncoder`) when no `model` is given.
        generator: HF causal LM when no `model` is given (with `tokenizer`).
        tokenizer: The generator's tokenizer.
        train_config: `TrainConfig` for `train_rag` (epochs, learning rate, max_steps,
            train_mode, generator_lora, output_dir, ...); default `TrainConfig()`.
        documents: Documents to index instead of exporting a store.
        ids: With a store: fetch only these ids via `get_by_ids`. With `documents`: their ids
            (default: `Document.id`, else the position).
        val_pairs: Validation QA pairs (same forms as `qa_pairs`); None: no evaluation.
        batch_size: Questions per training batch.
        num_docs: K passages per question; default min(model's K, number of documents).
        k: Documents returned by the result's `retriever`.
        prompt: `PromptConfig` for a model built here (default: the model's, else `PromptConfig()`).
        rag_config: `RagConfig` for a model built here.
        title_key: Document metadata key used as passage title (None: no titles).
        index_factory: FAISS factory string of the new index.
        max_new_tokens: Answer budget of the result's `chain`.
        filter: Train on the documents the store's own filter selects, given as the store
            takes it in its searches: `InMemoryVectorStore` a callable over Documents,
            `Chroma` a `where` dict, `QdrantVectorStore` a `qdrant_client.models.Filter`
            (legacy `Qdrant`: also a metadata dict), community `FAISS` a metadata dict or a
            callable over metadata. Refused with `ids`, `documents` or another store.
        dedupe: Merge exact duplicates (same text and title) into the first one, whose
            ``metadata["duplicate_ids"]`` lists every merged id; False keeps them all.
        mode: "copy" (default): export the documents and index them anew with the question
            encoder. "in_place": train against the store as it is (no export, no re-embedding;
            see `contextflow_integrations.langchain.in_place`): the store (or a
            `VectorStoreBackend`, e.g. `stores.MilvusBackend`) is searched live, its vectors
            must come from the starting encoder (checked), and `documents`, `ids`, `filter`,
            `index_factory` are refused; rows are used as stored (no dedupe). Without
            `qa_pairs` the questions are written from the store's rows (see `qa_pairs`).
        store_check: With mode="in_place", check that the stored vectors are the starting
            encoder's embeddings of the stored texts (default True).
        question_llm: With no `qa_pairs`: the question writer. None: the embedded SmolLM2;
            "embedded" / "cloze" (rule-based, no model); a LangChain chat model or LLM; or a
            callable prompt -> text. Refused with `qa_pairs`.
        qa_options: With no `qa_pairs`: further `generate_qa` keyword arguments (e.g.
            ``{"num_questions_per_passage": 2, "sample": 500, "cache": "qa_cache.jsonl",
            "filters": QAFilters(...)}``; ``seed`` defaults to the train config's; with
            mode="in_place", ``sample`` is the number of store rows drawn, see `qa_pairs`).
            Refused with `qa_pairs`.
        val_fraction: With no `qa_pairs` and no `val_pairs`: share of the documents whose
            generated pairs are held out for validation (default 0.1; 0: none). Refused with
            `qa_pairs` or `val_pairs`.

    Returns:
        A `FinetuneResult` with the trained model, `retriever`, `chain` and training `history`.

    Metadata is converted to JSON by `contextflow_core.metadata.json_metadata` (dates to
    ISO 8601 strings, tuples and sets to lists, non-string keys to strings), or refused,
    before training starts.

    Raises:
        TypeError: The store's class has no exporter and no `ids` were given (pass `documents=`).
        ValueError: Conflicting or malformed arguments, an empty store (or filter selecting
            nothing), a filter the store does not take, metadata JSON cannot hold, or bad QA data.
    """
    check_generation_arguments(qa_pairs, question_llm, qa_options, val_fraction, val_pairs is not None)
    writer = as_question_writer(question_llm) if qa_pairs is None else None
    examples = load_qa(qa_pairs) if qa_pairs is not None else None
    if examples is not None and not examples:
        raise ValueError("qa_pairs: expected at least one (question, answer) pair, got none")
    config = train_config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"train_config: expected a TrainConfig, got {type(config).__name__}")
    if _in_place.check_mode(mode) == "in_place":
        _in_place.refuse_copy_only(documents=documents, ids=ids, filter=filter, index_factory=index_factory)
        val = load_qa(val_pairs) if val_pairs is not None else None
        if examples is None:
            check_store_qa_options(qa_options)
        make_qa = (
            None
            if examples is not None
            else partial(  # documents only: questions from the store's rows
                generate_store_training_qa,
                writer=writer,
                qa_options=qa_options,
                val_fraction=val_fraction,
                has_val_pairs=val is not None,
                seed=config.seed,
                progress=config.progress,
                title_key=title_key or "title",
                arg="vectorstore",
            )
        )
        return _in_place.finetune_in_place(
            vectorstore,
            examples,
            val_examples=val,
            model=model,
            encoder=encoder,
            generator=generator,
            tokenizer=tokenizer,
            config=config,
            batch_size=batch_size,
            num_docs=num_docs,
            k=k,
            prompt=prompt,
            rag_config=rag_config,
            title_key=title_key,
            max_new_tokens=max_new_tokens,
            store_check=store_check,
            make_qa=make_qa,
        )
    rag = rag_from_vectorstore(
        vectorstore,
        model=model,
        encoder=encoder,
        generator=generator,
        tokenizer=tokenizer,
        documents=documents,
        ids=ids,
        num_docs=num_docs,
        prompt=prompt,
        rag_config=rag_config,
        title_key=title_key,
        index_factory=index_factory,
        filter=filter,
        dedupe=dedupe,
    )
    qa = None
    if examples is None:  # documents only: write the training questions first
        qa = generate_training_qa(
            rag.index.passages,
            writer,
            qa_options=qa_options,
            val_fraction=val_fraction,
            has_val_pairs=val_pairs is not None,
            seed=config.seed,
            progress=config.progress,
        )
        examples, val_pairs = qa.training_examples(val_pairs)
    train = make_dataloader(examples, batch_size=batch_size, shuffle=True, seed=config.seed)
    val_loader = make_dataloader(val_pairs, batch_size=batch_size, shuffle=False) if val_pairs is not None else None
    history = train_rag(rag, train, val_loader, config=config)
    return FinetuneResult(
        model=rag,
        retriever=ContextFlowRetriever(model=rag, k=min(k, len(rag.index))),
        chain=ContextFlowRAG(model=rag, max_new_tokens=max_new_tokens),
        history=history,
        documents=[passage_to_document(p) for p in rag.index.passages],
        embeddings=ContextFlowEmbeddings.from_rag(rag),
        qa=qa,
    )
