"""finetune_from_index: jointly fine-tune ContextFlow on the nodes of a LlamaIndex index.

Boundary: glue only. Nodes come out of the index (`export.nodes_from_index`),
become a ContextFlow `DocumentIndex` embedded by the model's question encoder,
and `contextflow_core.training.train_rag` trains the RAGSequence on the
question/answer pairs; the result carries LlamaIndex components over the
trained model.

Without QA pairs (`qa_pairs=None`), the training questions are written from the
nodes first (`contextflow_core.data.generate_qa`, the writer chosen by
`question_llm=`: a LlamaIndex LLM, a writer name, or a callable), and a tenth of
the nodes' questions is held out for validation; ``result.qa`` keeps them. With
``mode="in_place"`` they are written from a bounded, seeded sample of the vector
store's rows (`contextflow_core.data.qa_store`; at most 1000 rows unless
``qa_options={"sample": n}``), from the nodes' plain text.

QA pairs: anything `contextflow_core.data.readers.load_qa` reads (a list of
``(question, answer[, gold_ids])`` tuples, dicts, `QAExample`, a JSONL/JSON/CSV
path, a HF dataset), or LlamaIndex's id-keyed layout: an object or dict (or a
``.json`` file of one) with ``queries`` {query_id: question} and optionally
``relevant_docs`` {query_id: [node_id]} and ``corpus`` {node_id: text}, the
layout of `EmbeddingQAFinetuneDataset`. That layout has no answers, and
ContextFlow trains the generator on answers, so each query needs one from
(first match wins):
    1. ``answers=`` {query_id: answer} (or a `QueryResponseDataset`, whose
       ``responses`` are keyed by the same query ids);
    2. the layout's own ``responses`` or ``answers`` {query_id: answer} (so a
       `QueryResponseDataset` is accepted on its own);
    3. a query given as {"question": ..., "answer": ...} or (question, answer).
A query without an answer is an error that lists the ids. ``relevant_docs``
become the examples' gold ids: training does not use them (the retriever learns
from the answers), they only feed recall@k and MRR. With no index and no nodes,
the layout's ``corpus`` is the passage collection.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from llama_index.core.schema import TextNode

from contextflow_core.building import build_rag
from contextflow_core.config import PromptConfig, RagConfig, TrainConfig
from contextflow_core.data.qa_store import check_store_qa_options, generate_store_training_qa
from contextflow_core.data.qa_training import GeneratedQA, check_generation_arguments, generate_training_qa
from contextflow_core.data.readers import QAExample, load_qa
from contextflow_core.evaluation.metrics import mrr, recall_at_k
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.training import TrainHistory, make_dataloader, train_rag
from contextflow_core.types import Passage
from contextflow_integrations.llamaindex import in_place as _in_place
from contextflow_integrations.llamaindex.export import ContextFlowEmbedding, nodes_from_index, passages_from_nodes
from contextflow_integrations.llamaindex.qa_writer import as_question_writer
from contextflow_integrations.llamaindex.query_engine import ContextFlowQueryEngine
from contextflow_integrations.llamaindex.retriever import ContextFlowRetriever

__all__ = ["FinetuneResult", "finetune_from_index", "load_qa_pairs"]


@dataclass
class FinetuneResult:
    """What `finetune_from_index` returns.

    Attributes:
        model: The trained RAGSequence (its index holds the pulled nodes, ids = node ids).
        query_engine: A `ContextFlowQueryEngine` over `model`.
        retriever: A `ContextFlowRetriever` over `model`.
        history: The `TrainHistory` of `train_rag` (per-step losses, evaluations, stop reason).
        examples: The training examples, as parsed (gold ids from ``relevant_docs``).
        retrieval_before: ``recall@1``, ``recall@k``, ``mrr`` (k = num_docs), ``k`` and
            ``num_questions`` on the training questions that have gold ids, before
            training; None when none has.
        retrieval_after: The same after training.
        embed_model: `ContextFlowEmbedding` (queries: the trained question encoder, texts: the
            frozen passage encoder) for the index's own retriever:
            ``index.as_retriever(embed_model=result.embed_model)``.
        qa: With no `qa_pairs`: the generated pairs (``qa.all``, with ``qa.all.report``), the
            part trained on (``qa.train``, also `examples`) and the held-out part (``qa.val``);
            None otherwise.
    """

    model: RAGSequence
    query_engine: ContextFlowQueryEngine
    retriever: ContextFlowRetriever
    history: TrainHistory
    examples: list[QAExample] = field(repr=False)
    retrieval_before: dict[str, float] | None = None
    retrieval_after: dict[str, float] | None = None
    embed_model: Any | None = field(default=None, repr=False)
    qa: GeneratedQA | None = field(default=None, repr=False)

    @property
    def qa_report(self) -> Any:
        """The `QAReport` of the generated pairs (None when `qa_pairs` were given)."""
        return self.qa.all.report if self.qa is not None else None

    def llm(self, **kwargs: Any):
        """The trained generator alone as a `ContextFlowLLM` (kwargs: its fields, e.g. max_new_tokens)."""
        from contextflow_integrations.llamaindex.llm import ContextFlowLLM

        return ContextFlowLLM(self.model, **kwargs)

    def save(self, directory: Any) -> None:
        """Save the trained model and its index (`RAGSequence.save_pretrained`)."""
        self.model.save_pretrained(directory)


# ----------------------------------------------------------------------------- QA pairs
def _id_layout(source: Any) -> Mapping | None:
    """The id-keyed layout as a mapping (queries, relevant_docs, corpus, responses/answers), or None."""
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".json" and Path(source).is_file():
        text = Path(source).read_text(encoding="utf-8")
        data = json.loads(text) if text.lstrip().startswith("{") else None
        return data if isinstance(data, Mapping) and "queries" in data else None
    if isinstance(source, Mapping):
        return source if "queries" in source else None
    if isinstance(getattr(source, "queries", None), Mapping):
        return {
            key: getattr(source, key)
            for key in ("queries", "relevant_docs", "corpus", "responses", "answers")
            if isinstance(getattr(source, key, None), Mapping)
        }
    return None


def _answer_map(answers: Any) -> Mapping:
    if answers is None:
        return {}
    mapping = getattr(answers, "responses", answers)
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"answers: expected a mapping {{query_id: answer}} or a QueryResponseDataset, got {type(answers).__name__}"
        )
    return mapping


def _split_query(value: Any) -> tuple[Any, Any]:
    if isinstance(value, Mapping):
        return value.get("question", value.get("query")), value.get("answer")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    return value, None


def load_qa_pairs(qa_pairs: Any, answers: Any = None) -> list[QAExample]:
    """Parse QA pairs in any accepted format (see the module docstring) into `QAExample`s.

    Args:
        qa_pairs: Tuples, dicts, `QAExample`s, a file path, a HF dataset, or the id-keyed layout.
        answers: {query_id: answer} (or a `QueryResponseDataset`) for the id-keyed layout.

    Raises:
        ValueError: A query of the id-keyed layout has no answer (the ids are listed),
            `answers` given with another format, or a malformed row.
    """
    layout = _id_layout(qa_pairs)
    if layout is None:
        if answers is not None:
            raise ValueError(
                "answers: only used with the id-keyed layout (queries={query_id: question}), "
                f"got it with {type(qa_pairs).__name__} QA pairs, whose rows carry their answers"
            )
        return load_qa(qa_pairs)
    given = _answer_map(answers)
    own = layout.get("responses") or layout.get("answers") or {}
    relevant = layout.get("relevant_docs") or {}
    rows, missing = [], []
    for qid, value in layout["queries"].items():
        question, inline = _split_query(value)
        answer = next((a for a in (given.get(qid), own.get(qid), inline) if a is not None and a != ""), None)
        if answer is None:
            missing.append(qid)
            continue
        gold = relevant.get(qid) or []
        gold = [gold] if isinstance(gold, str) else gold
        rows.append(
            {
                "question": question,
                "answer": answer,
                "gold_ids": [str(g) for g in gold],
                "metadata": {"query_id": str(qid)},
            }
        )
    if missing:
        raise ValueError(
            f"answers: no answer for {len(missing)} of {len(layout['queries'])} queries (ids {missing[:5]}); the "
            "queries/corpus/relevant_docs layout (EmbeddingQAFinetuneDataset) holds no answers, and ContextFlow "
            "trains on answers: pass answers={query_id: answer} (or a QueryResponseDataset with the same ids)"
        )
    return load_qa(rows)


# ----------------------------------------------------------------------------- model and index
def _collect_passages(index_or_vector_store: Any, nodes: Sequence[Any] | None, qa_pairs: Any) -> list[Passage]:
    if nodes is not None:
        if index_or_vector_store is not None:
            raise ValueError(
                "index_or_vector_store, nodes: expected one source of nodes, got both; "
                "pass index_or_vector_store=None to use nodes, or nodes=None to pull the index's"
            )
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
            raise ValueError(f"nodes: expected a list of LlamaIndex nodes, got {type(nodes).__name__}")
        return passages_from_nodes(nodes)
    if index_or_vector_store is None:
        corpus = (_id_layout(qa_pairs) or {}).get("corpus")
        if corpus:
            return passages_from_nodes(TextNode(id_=str(k), text=v) for k, v in corpus.items())
    return passages_from_nodes(nodes_from_index(index_or_vector_store))


@torch.no_grad()
def _retrieval_metrics(rag: RAGSequence, examples: list[QAExample], batch_size: int = 64) -> dict | None:
    labelled = [e for e in examples if e.gold_ids]
    if not labelled:
        return None
    k = min(rag.resolve_num_docs(None), len(rag.index))
    ids = []
    for start in range(0, len(labelled), batch_size):
        questions = [e.question for e in labelled[start : start + batch_size]]
        ids += rag.index.search(rag.question_encoder.encode(questions), k).ids
    gold = [e.gold_ids for e in labelled]
    return {
        "recall@1": recall_at_k(ids, gold, 1),
        "recall@k": recall_at_k(ids, gold, k),
        "mrr": mrr(ids, gold, k),
        "k": k,
        "num_questions": len(labelled),
    }


def _warn_unknown_gold(examples: list[QAExample], index: DocumentIndex) -> None:
    gold = {g for e in examples for g in e.gold_ids}
    unknown = sorted(g for g in gold if g not in index)
    if unknown:
        warnings.warn(
            f"qa_pairs: {len(unknown)} of {len(gold)} gold ids are not node ids of the index "
            f"(e.g. {unknown[:3]}); recall@k counts them as misses",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- entry point
def finetune_from_index(
    index_or_vector_store: Any,
    qa_pairs: Any = None,
    *,
    nodes: Sequence[Any] | None = None,
    answers: Any = None,
    val_pairs: Any = None,
    model: RAGSequence | None = None,
    encoder: Any = None,
    generator: Any = None,
    tokenizer: Any = None,
    train_config: TrainConfig | None = None,
    batch_size: int = 4,
    num_docs: int | None = None,
    prompt: PromptConfig | None = None,
    rag_config: RagConfig | None = None,
    query_engine_kwargs: dict | None = None,
    mode: str = "copy",
    store_check: bool = True,
    question_llm: Any = None,
    qa_options: dict | None = None,
    val_fraction: float | None = None,
) -> FinetuneResult:
    """Pull the nodes of a LlamaIndex index, train retriever and generator jointly, get LlamaIndex parts back.

    The index's current nodes (deleted nodes stay out, even where the docstore keeps
    them) become a ContextFlow `DocumentIndex` (ids = node ids, ``metadata["title"]`` as
    title, metadata converted to JSON by `contextflow_core.metadata.json_metadata` or
    refused before training, relationships kept so the result's source nodes carry the
    same ``ref_doc_id`` and SOURCE/PREVIOUS/NEXT/PARENT/CHILD) embedded by the question encoder (one shared
    embedding space; the LlamaIndex embeddings are not used). The models come from
    `model` (a RAGSequence: its encoder, generator, prompt and config are trained in
    place, its index is replaced), or from `encoder`/`generator`/`tokenizer`, or by
    default from the embedded models (all-MiniLM-L6-v2, SmolLM2-135M-Instruct).
    The index or store itself is never modified.

    Args:
        index_or_vector_store: A `VectorStoreIndex` (any docstore-backed index) or a vector
            store; None when `nodes` (or the id-keyed layout's ``corpus``) gives the passages.
        qa_pairs: Training QA pairs: tuples, dicts, a JSONL/JSON/CSV path, or the id-keyed
            layout of `EmbeddingQAFinetuneDataset` (see the module docstring). None (the
            default): generate them from the pulled nodes with `contextflow_core.data.generate_qa`
            (writer: `question_llm`), hold out `val_fraction` of them by node for validation,
            and keep them in ``result.qa``.
        nodes: Nodes (or Documents, NodeWithScore) to index instead of pulling them out of
            `index_or_vector_store`: the way out for stores whose nodes cannot be read back.
        answers: {query_id: answer} (or a `QueryResponseDataset`) for the id-keyed layout.
        val_pairs: Validation QA pairs (same formats and `answers`); evaluated by `train_rag`
            (loss, recall@k with the gold ids); None: no evaluation.
        model: A RAGSequence whose parts are trained.
        encoder: Question encoder (`TextEncoder`) when no `model` is given.
        generator: HF causal LM when no `model` is given (with `tokenizer`).
        tokenizer: The generator's tokenizer.
        train_config: `TrainConfig` of `train_rag` (epochs, learning rate, max_steps,
            train_mode, output_dir, ...); default `TrainConfig()`.
        batch_size: Questions per training batch.
        num_docs: K passages per question; default min(the model's K, number of nodes).
        prompt: `PromptConfig` of a model built here (default: the model's, else `PromptConfig()`).
        rag_config: `RagConfig` of a model built here.
        query_engine_kwargs: `ContextFlowQueryEngine` fields of the result's engine
            (max_new_tokens, decoding, streaming, ...).
        mode: "copy" (default): pull the nodes and index them anew with the question encoder.
            "in_place": train against the index's vector store as it is (no copy, no
            re-embedding; see `contextflow_integrations.llamaindex.in_place`); the stored
            vectors must come from the starting encoder (checked); `nodes` is refused.
            Without `qa_pairs` the questions are written from the store's rows, read through
            the backend's ``iter_rows`` (refused by name without it) from the nodes' plain text,
            sampled as they are read (reservoir sampling, seeded, memory bounded by the
            sample): ``qa_options={"sample": n}`` rows; without ``"sample"`` every row of a
            store of up to 1000 rows, else 1000 of them with a warning; ``{"sample": None}``:
            every row.
        store_check: With mode="in_place", check the embedding space first (default True).
        question_llm: With no `qa_pairs`: the question writer. None: the embedded SmolLM2;
            "embedded" / "cloze" (rule-based, no model); a LlamaIndex LLM; or a callable
            prompt -> text. Refused with `qa_pairs`.
        qa_options: With no `qa_pairs`: further `generate_qa` keyword arguments (e.g.
            ``{"num_questions_per_passage": 2, "sample": 500, "cache": "qa_cache.jsonl"}``;
            ``seed`` defaults to the train config's; with mode="in_place", ``sample`` is the
            number of store rows drawn, see `mode`). Refused with `qa_pairs`.
        val_fraction: With no `qa_pairs` and no `val_pairs`: share of the nodes whose generated
            pairs are held out for validation (default 0.1; 0: none). Refused with `qa_pairs`
            or `val_pairs`.

    Returns:
        A `FinetuneResult`: the trained model, `query_engine`, `retriever`, `history`, and
        recall@k before and after training when the QA pairs carry gold ids.

    Raises:
        ValueError: No nodes can be pulled or every node was deleted (the message names the
            store; pass `nodes=`), metadata JSON cannot hold (names the node id and key), a
            query without an answer, conflicting model arguments, or bad QA data.

    Example:
        >>> result = finetune_from_index(index, [("Who founded Tarsk?", "Ilo Varn")])  # doctest: +SKIP
        >>> result.query_engine.query("Who founded Tarsk?").source_nodes[0].node_id  # doctest: +SKIP
        'node-3'
    """
    check_generation_arguments(qa_pairs, question_llm, qa_options, val_fraction, val_pairs is not None)
    writer = _documents_only_writer(question_llm, answers, val_pairs) if qa_pairs is None else None
    examples = load_qa_pairs(qa_pairs, answers) if qa_pairs is not None else None
    if examples is not None and not examples:
        raise ValueError("qa_pairs: expected at least one (question, answer) pair, got none")
    val_examples = load_qa_pairs(val_pairs, answers) if val_pairs is not None else None
    config = train_config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"train_config: expected a TrainConfig, got {type(config).__name__}")
    if _in_place.check_mode(mode, nodes) == "in_place":
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
                has_val_pairs=val_examples is not None,
                seed=config.seed,
                progress=config.progress,
                arg="index_or_vector_store",
            )
        )
        return _in_place.finetune_in_place(
            index_or_vector_store,
            examples,
            val_examples=val_examples,
            model=model,
            encoder=encoder,
            generator=generator,
            tokenizer=tokenizer,
            config=config,
            batch_size=batch_size,
            num_docs=num_docs,
            prompt=prompt,
            rag_config=rag_config,
            query_engine_kwargs=query_engine_kwargs,
            store_check=store_check,
            metrics=_retrieval_metrics,
            make_qa=make_qa,
        )
    passages = _collect_passages(index_or_vector_store, nodes, qa_pairs)
    rag = build_rag(
        passages,
        model=model,
        encoder=encoder,
        generator=generator,
        tokenizer=tokenizer,
        num_docs=num_docs,
        prompt=prompt,
        rag_config=rag_config,
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
        examples, val_examples = qa.training_examples(val_examples)
    _warn_unknown_gold(examples + (val_examples or []), rag.index)
    before = _retrieval_metrics(rag, examples)
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
        retrieval_after=_retrieval_metrics(rag, examples),
        embed_model=ContextFlowEmbedding.from_rag(rag),
        qa=qa,
    )


def _documents_only_writer(question_llm: Any, answers: Any, val_pairs: Any) -> Any:
    if answers is not None and val_pairs is None:
        raise ValueError(
            "answers: answers the queries of given qa_pairs/val_pairs, got it with neither (the pairs "
            "are generated and carry their answers); drop answers, or pass the pairs it answers"
        )
    return as_question_writer(question_llm)
