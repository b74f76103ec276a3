"""ContextFlowQueryEngine: RAG-Sequence answering as a LlamaIndex query engine.

Boundary: conversion and delegation only. A query goes to `RAGSequence.generate`
(retrieval, per-passage generation, marginalisation all happen there); the
`RagAnswer` comes back as a `Response` whose `source_nodes` are the K passages
with score = posterior weight p(z|x,y), highest first, and whose metadata holds
the answer's log p(y|x), the decoding mode and K.

`query`/`aquery` are the base `BaseQueryEngine` methods, so a query opens a span
and fires `QueryStartEvent`/`QueryEndEvent` on LlamaIndex's instrumentation
dispatcher exactly as the built-in engines do (`CustomQueryEngine.query` does
not fire them). Inside, as in `RetrieverQueryEngine`, `retrieve` (a span with
`RetrievalStartEvent`/`RetrievalEndEvent`; nodes scored by the prior p(z|x)) is
followed by `synthesize` (a span with LLM start/end events per prompt of each
decoding pass), and the legacy callback manager sees QUERY, RETRIEVE, SYNTHESIZE
and LLM events (see `tracing`). `aquery` runs the model in a worker thread.

The engine is a `PromptMixin`: `get_prompts()` returns the model's `PromptConfig`
fields as `PromptTemplate`s and `update_prompts({...})` sets them (see `prompts`).

Streaming (``streaming=True``) returns a `StreamingResponse` (`AsyncStreamingResponse`
from `aquery`):
    - decoding="concat" (one prompt with all K passages) streams tokens as the
      generator produces them; `source_nodes` is filled in place when the stream
      ends, since the weights p(z|x,y) need the whole answer.
    - decoding="thorough"/"fast" (RAG-Sequence proper) choose the answer only after
      generating and scoring candidates under every passage, so nothing can be
      shown earlier: the stream yields the final answer as one chunk and
      `source_nodes` is set from the start.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncGenerator, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field, field_validator, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType

from contextflow_core.generation import DECODERS
from contextflow_core.types import RagAnswer
from contextflow_core.validation import RAG_RESERVED, as_int, check_generate_kwargs, refuse_unknown, take_alias
from contextflow_integrations.llamaindex.export import passage_to_node
from contextflow_integrations.llamaindex.prompts import config_prompts, update_model_prompts
from contextflow_integrations.llamaindex.tracing import LLMEvents, dispatcher, prior_nodes, retrieval_of, same_passages
from contextflow_integrations.rag_trace import Retrieval, generate_recording, retrieve

__all__ = ["ContextFlowQueryEngine", "source_nodes"]

#: Conventional names with no counterpart here -> the field to use.
_RENAMES = {"max_tokens": "max_new_tokens", "k": "num_docs", "top_k": "num_docs"}
#: generate() arguments that are fields of the engine or set by RAG decoding.
_RESERVED = {
    **RAG_RESERVED,
    "questions": "pass the query to query()",
    "num_docs": "pass num_docs= itself",
    "max_new_tokens": "pass max_new_tokens= itself",
    "decoding": "pass decoding= itself",
    "streamer": "set streaming=True",
}


def source_nodes(answer: RagAnswer) -> list[NodeWithScore]:
    """The answer's sources as nodes, score = p(z|x,y), highest first."""
    return [NodeWithScore(node=passage_to_node(p), score=float(w)) for p, w in answer.sources]


class ContextFlowQueryEngine(CustomQueryEngine):
    """Answer queries with a (fine-tuned) RAGSequence.

    Args:
        rag: The RAGSequence.
        num_docs: K passages per query; None: the model's `num_docs`. `similarity_top_k`
            (LlamaIndex's name) is accepted as the same setting.
        max_new_tokens: Answer token budget.
        decoding: "thorough" (RAG-Sequence, rescoring every candidate under every
            passage), "fast" (no rescoring) or "concat" (all passages in one prompt).
        streaming: Return a streaming response (see the module docstring).
        generate_kwargs: Extra arguments of `RAGSequence.generate` (e.g. num_beams), checked
            at construction. Any other field name is refused, listing the accepted ones.
        batching: Answer concurrent queries (threads, `aquery` tasks) in shared `generate`
            calls through the model's `RequestBatcher` (`RAGSequence.batcher()`), with the same
            answers and sources as one call each. Used only while no callback handler,
            instrumentation event handler or span handler is attached (traced queries keep their
            per-pass LLM events) and the query does not stream tokens; False: one call per query.

    Queries gathered concurrently (`aquery`) fail or succeed independently, batched or not.

    Example:
        >>> engine = ContextFlowQueryEngine(rag=rag, num_docs=3)  # doctest: +SKIP
        >>> response = engine.query("Who founded Tarsk?")  # doctest: +SKIP
        >>> response.response, [(n.node_id, round(n.score, 2)) for n in response.source_nodes]  # doctest: +SKIP
        ('Ilo Varn', [('p3', 0.91), ('p0', 0.06), ('p5', 0.03)])
    """

    rag: Any = Field(exclude=True, repr=False, description="The RAGSequence.")
    num_docs: int | None = Field(default=None, gt=0, description="K; None: the model's.")
    max_new_tokens: int = Field(default=64, gt=0, description="Answer token budget.")
    decoding: str = Field(default="thorough", description="'thorough', 'fast' or 'concat'.")
    streaming: bool = Field(default=False, description="Return a streaming response.")
    generate_kwargs: dict = Field(default_factory=dict, description="Extra arguments of RAGSequence.generate.")
    batching: bool = Field(
        default=True,
        description="Answer concurrent queries in shared generate calls "
        "(the model's RequestBatcher) while nothing traces them.",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        """`similarity_top_k` (LlamaIndex's name) is `num_docs`; unknown names and string numbers are refused."""
        if not isinstance(data, dict):
            return data
        data = take_alias(data, "similarity_top_k", "num_docs", cls.__name__)
        refuse_unknown(cls.__name__, data, cls.model_fields, _RENAMES)
        if "num_docs" in data:
            data["num_docs"] = as_int("num_docs", data["num_docs"], none_ok=True)
        if "max_new_tokens" in data:
            data["max_new_tokens"] = as_int("max_new_tokens", data["max_new_tokens"])
        if isinstance(data.get("generate_kwargs"), dict):
            data["generate_kwargs"] = check_generate_kwargs(
                data["generate_kwargs"], owner="generate_kwargs", reserved=_RESERVED
            )
        return data

    @field_validator("rag")
    @classmethod
    def _check_rag(cls, rag: Any) -> Any:
        if not (hasattr(rag, "generate") and hasattr(rag, "retrieve") and hasattr(rag, "generator")):
            raise ValueError(f"rag: expected a RAGSequence, got {type(rag).__name__}")
        return rag

    @field_validator("decoding")
    @classmethod
    def _check_decoding(cls, decoding: str) -> str:
        if decoding not in DECODERS:
            raise ValueError(f"decoding: expected one of {sorted(DECODERS)}, got {decoding!r}")
        return decoding

    # The built-in engines' query/aquery: span + QueryStartEvent/QueryEndEvent around _query/_aquery.
    query = BaseQueryEngine.query
    aquery = BaseQueryEngine.aquery

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        """retrieve (span, RETRIEVE event) then synthesize (span, LLM events), inside a QUERY event."""
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as event:
            response = self.synthesize(query_bundle, self.retrieve(query_bundle))
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        # A thread per waiting query (the span context goes along), from a pool of our own: the event
        # loop's default one holds min(32, CPUs + 4) threads, which would cap how many concurrent
        # queries can reach the RequestBatcher together (6 on 2 cores) and so the batch size.
        call = functools.partial(contextvars.copy_context().run, self._query, query_bundle)
        response = await asyncio.get_running_loop().run_in_executor(_AQUERY_POOL, call)
        if isinstance(response, StreamingResponse):
            return AsyncStreamingResponse(
                response_gen=_async_tokens(response.response_gen),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
        return response

    def custom_query(self, query_str: str) -> RESPONSE_TYPE:
        """Answer `query_str` (as `query`, without its span): a `Response`, or a `StreamingResponse`."""
        return self._query(QueryBundle(query_str))

    async def acustom_query(self, query_str: str) -> RESPONSE_TYPE:
        """As `custom_query`, with the model run in a worker thread; streams asynchronously."""
        return await self._aquery(QueryBundle(query_str))

    # -- the two steps --------------------------------------------------------------------
    @dispatcher.span
    def retrieve(self, query_bundle: QueryType) -> list[NodeWithScore]:
        """The K passages of the query as nodes scored by the prior p(z|x) (best first).

        Each node's ``metadata["retrieval_score"]`` is the inner product q . d the index ranked
        it by. Fires RetrievalStartEvent / RetrievalEndEvent and a RETRIEVE callback event.
        """
        bundle = QueryBundle(query_bundle) if isinstance(query_bundle, str) else query_bundle
        dispatcher.event(RetrievalStartEvent(str_or_query_bundle=bundle))
        with self.callback_manager.event(
            CBEventType.RETRIEVE, payload={EventPayload.QUERY_STR: bundle.query_str}
        ) as event:
            nodes = prior_nodes(retrieve(self.rag, [bundle.query_str], self.num_docs))
            event.on_end(payload={EventPayload.NODES: nodes})
        dispatcher.event(RetrievalEndEvent(str_or_query_bundle=bundle, nodes=nodes))
        return nodes

    @dispatcher.span
    def synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        """Answer from the nodes `retrieve(query_bundle)` returned, by RAG-Sequence decoding.

        Fires LLM start/end events per prompt of each decoding pass (see `tracing`) inside a
        SYNTHESIZE callback event. The answer's `source_nodes` are scored by the posterior p(z|x,y).

        Raises:
            ValueError: `nodes` are not the ones `retrieve` returns for this query (RAG-Sequence
                weighs its own retriever's passages), or `additional_source_nodes` are given.
        """
        if additional_source_nodes:
            raise ValueError(
                "additional_source_nodes: expected none, got "
                f"{len(additional_source_nodes)}; RAG-Sequence answers from its K retrieved passages"
            )
        retrieval = retrieval_of(query_bundle.query_str, list(nodes))
        if self.streaming:
            return self._stream(retrieval)
        answer = self._generate(retrieval)
        return Response(response=answer.text, source_nodes=source_nodes(answer), metadata=self._metadata(answer))

    # -- answering ----------------------------------------------------------------------
    def _generate(self, retrieval: Retrieval, **extra: Any) -> RagAnswer:
        """One traced `generate` call for the retrieval's question (see `tracing`)."""
        options = {
            "num_docs": self.num_docs,
            "max_new_tokens": self.max_new_tokens,
            "decoding": self.decoding,
            **self.generate_kwargs,
            **extra,
        }
        if self.batching and not extra and not _observed(self.callback_manager):
            return self._generate_batched(retrieval, options)
        events = LLMEvents(self.callback_manager, retrieval, {**self._model_dict(), **self._metadata(None)})
        with self.callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: retrieval.questions[0]}
        ) as event:
            try:
                answers, _ = generate_recording(self.rag, retrieval.questions, options, retrieval, events.start)
            except BaseException as e:
                events.error(e)
                raise
            events.end(answers)
            event.on_end(payload={EventPayload.RESPONSE: answers[0].text})
        mismatch = same_passages(retrieval, answers[0])
        if mismatch:
            raise ValueError(mismatch)
        return answers[0]

    def _generate_batched(self, retrieval: Retrieval, options: dict[str, Any]) -> RagAnswer:
        """The query through the model's shared `RequestBatcher` (concurrent queries share generate calls)."""
        answer = self.rag.batcher().generate(retrieval.questions[0], **options)
        mismatch = same_passages(retrieval, answer)
        if mismatch:
            raise ValueError(mismatch)
        return answer

    def _model_dict(self) -> dict[str, Any]:
        config = getattr(self.rag.generator, "config", None)
        return {
            "model_name": getattr(config, "_name_or_path", None) or type(self.rag.generator).__name__,
            "max_new_tokens": self.max_new_tokens,
        }

    def _metadata(self, answer: RagAnswer | None) -> dict[str, Any]:
        return {
            "score": None if answer is None else answer.score,
            "decoding": self.decoding,
            "num_docs": self.rag.resolve_num_docs(self.num_docs),
        }

    # -- prompts (PromptMixin) --------------------------------------------------------------
    def _get_prompts(self) -> dict[str, Any]:
        """The model's `PromptConfig` fields as `PromptTemplate`s (see `llamaindex.prompts`)."""
        return config_prompts(self.rag.prompt_config)

    def _update_prompts(self, prompts_dict: dict[str, Any]) -> None:
        """Set the model's `PromptConfig` fields named in `prompts_dict` (validated; unknown keys refused)."""
        update_model_prompts(self.rag, prompts_dict, type(self).__name__)

    # -- streaming ----------------------------------------------------------------------
    def _stream(self, retrieval: Retrieval) -> StreamingResponse:
        if self.decoding != "concat":
            answer = self._generate(retrieval)
            chunks = (text for text in ([answer.text] if answer.text else []))
            return StreamingResponse(
                response_gen=chunks, source_nodes=source_nodes(answer), metadata=self._metadata(answer)
            )
        # response_gen is set just below: the token generator fills this very response's sources and metadata
        response = StreamingResponse(response_gen=None, source_nodes=[], metadata=self._metadata(None))  # type: ignore[arg-type]
        context = contextvars.copy_context()  # the synthesize span's, for the events of the generating thread
        response.response_gen = self._concat_tokens(retrieval, response, context)
        return response

    def _concat_tokens(
        self, retrieval: Retrieval, response: StreamingResponse, context: contextvars.Context
    ) -> Generator[str, None, None]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.rag.generator_tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["answer"] = self._generate(retrieval, streamer=streamer)
            except BaseException as e:  # re-raised in the consumer below
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=context.run, args=(run,), daemon=True)
        thread.start()
        yield from (token for token in streamer if token)
        thread.join()
        if "error" in result:
            raise result["error"]
        response.source_nodes[:] = source_nodes(result["answer"])
        if response.metadata is None:
            response.metadata = {}
        response.metadata.update(self._metadata(result["answer"]))


def _observed(callback_manager: Any) -> bool:
    """Whether a handler would see this query's LLM events (legacy callbacks or instrumentation).

    Batched answers carry no per-pass recording, so the engine batches only while nothing listens.
    """
    if getattr(callback_manager, "handlers", None):
        return True
    current: Any = dispatcher
    while current is not None:
        handlers = [*current.event_handlers, *current.span_handlers]
        if any(type(h).__name__ not in ("NullEventHandler", "NullSpanHandler") for h in handlers):
            return True
        current = current.parent if current.propagate else None
    return False


#: Most `aquery` calls of all engines that wait for an answer at once (threads blocked on the batcher).
AQUERY_THREADS = 64
#: The process-wide pool `aquery` runs queries on (its threads are made on demand).
_AQUERY_POOL = ThreadPoolExecutor(max_workers=AQUERY_THREADS, thread_name_prefix="contextflow-aquery")


async def _async_tokens(tokens) -> AsyncGenerator[str, None]:
    """An async generator over a blocking token generator (each step in a worker thread)."""
    done = object()
    while True:
        token = await asyncio.to_thread(next, tokens, done)
        if token is done:
            return
        yield cast(str, token)
