"""ContextFlowQueryEngine: RAG-Sequence answering as a LlamaIndex query engine.

Boundary: conversion and delegation only. A query goes to `RAGSequence.generate`
(retrieval, per-passage generation, marginalisation all happen there); the
`RagAnswer` comes back as a `Response` whose `source_nodes` are the K passages
with score = posterior weight p(z|x,y), highest first, and whose metadata holds
the answer's log p(y|x), the decoding mode and K.

`query`/`aquery` are the base `BaseQueryEngine` methods, so a query opens a span
and fires `QueryStartEvent`/`QueryEndEvent` on LlamaIndex's instrumentation
dispatcher exactly as the built-in engines do (`CustomQueryEngine.query` does
not fire them). `aquery` runs the model in a worker thread.

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
import threading
from typing import Any, AsyncGenerator, Generator, Optional

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field, field_validator, model_validator
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle

from contextflow_core.generation import DECODERS
from contextflow_core.types import RagAnswer
from contextflow_core.validation import RAG_RESERVED, as_int, check_generate_kwargs, refuse_unknown, take_alias
from contextflow_integrations.llamaindex.export import passage_to_node

__all__ = ["ContextFlowQueryEngine", "source_nodes"]

#: Conventional names with no counterpart here -> the field to use.
_RENAMES = {"max_tokens": "max_new_tokens", "k": "num_docs", "top_k": "num_docs"}
#: generate() arguments that are fields of the engine or set by RAG decoding.
_RESERVED = {**RAG_RESERVED, "questions": "pass the query to query()", "num_docs": "pass num_docs= itself",
             "max_new_tokens": "pass max_new_tokens= itself", "decoding": "pass decoding= itself",
             "streamer": "set streaming=True"}


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

    Each query is one `generate` call, so queries gathered concurrently (`aquery`) fail
    or succeed independently.

    Example:
        >>> engine = ContextFlowQueryEngine(rag=rag, num_docs=3)  # doctest: +SKIP
        >>> response = engine.query("Who founded Tarsk?")  # doctest: +SKIP
        >>> response.response, [(n.node_id, round(n.score, 2)) for n in response.source_nodes]  # doctest: +SKIP
        ('Ilo Varn', [('p3', 0.91), ('p0', 0.06), ('p5', 0.03)])
    """

    rag: Any = Field(exclude=True, repr=False, description="The RAGSequence.")
    num_docs: Optional[int] = Field(default=None, gt=0, description="K; None: the model's.")
    max_new_tokens: int = Field(default=64, gt=0, description="Answer token budget.")
    decoding: str = Field(default="thorough", description="'thorough', 'fast' or 'concat'.")
    streaming: bool = Field(default=False, description="Return a streaming response.")
    generate_kwargs: dict = Field(default_factory=dict, description="Extra arguments of RAGSequence.generate.")

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
            data["generate_kwargs"] = check_generate_kwargs(data["generate_kwargs"], owner="generate_kwargs",
                                                            reserved=_RESERVED)
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
        return self.custom_query(query_bundle.query_str)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        return await self.acustom_query(query_bundle.query_str)

    # -- answering ----------------------------------------------------------------------
    def _generate(self, query_str: str, **extra: Any) -> RagAnswer:
        return self.rag.generate(questions=[query_str], num_docs=self.num_docs, max_new_tokens=self.max_new_tokens,
                                 decoding=self.decoding, **{**self.generate_kwargs, **extra})[0]

    def _metadata(self, answer: Optional[RagAnswer]) -> dict[str, Any]:
        return {"score": None if answer is None else answer.score, "decoding": self.decoding,
                "num_docs": self.rag.resolve_num_docs(self.num_docs)}

    def custom_query(self, query_str: str) -> RESPONSE_TYPE:
        """Answer `query_str`: a `Response`, or a `StreamingResponse` when `streaming`."""
        if self.streaming:
            return self._stream(query_str)
        answer = self._generate(query_str)
        return Response(response=answer.text, source_nodes=source_nodes(answer), metadata=self._metadata(answer))

    async def acustom_query(self, query_str: str) -> RESPONSE_TYPE:
        """As `custom_query`, with the model run in a worker thread; streams asynchronously."""
        response = await asyncio.to_thread(self.custom_query, query_str)
        if isinstance(response, StreamingResponse):
            return AsyncStreamingResponse(response_gen=_async_tokens(response.response_gen),
                                          source_nodes=response.source_nodes, metadata=response.metadata)
        return response

    # -- streaming ----------------------------------------------------------------------
    def _stream(self, query_str: str) -> StreamingResponse:
        if self.decoding != "concat":
            answer = self._generate(query_str)
            chunks = iter([answer.text] if answer.text else [])
            return StreamingResponse(response_gen=chunks, source_nodes=source_nodes(answer),
                                     metadata=self._metadata(answer))
        response = StreamingResponse(response_gen=None, source_nodes=[], metadata=self._metadata(None))
        response.response_gen = self._concat_tokens(query_str, response)
        return response

    def _concat_tokens(self, query_str: str, response: StreamingResponse) -> Generator[str, None, None]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.rag.generator_tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["answer"] = self._generate(query_str, streamer=streamer)
            except BaseException as e:  # re-raised in the consumer below
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from (token for token in streamer if token)
        thread.join()
        if "error" in result:
            raise result["error"]
        response.source_nodes[:] = source_nodes(result["answer"])
        response.metadata.update(self._metadata(result["answer"]))


async def _async_tokens(tokens) -> AsyncGenerator[str, None]:
    """An async generator over a blocking token generator (each step in a worker thread)."""
    done = object()
    while True:
        token = await asyncio.to_thread(next, tokens, done)
        if token is done:
            return
        yield token
