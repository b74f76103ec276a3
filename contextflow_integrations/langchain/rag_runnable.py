"""ContextFlowRAG: a RAG-Sequence model as a LangChain Runnable.

Boundary: converts LangChain inputs (a question string or ``{"question": ...}``)
to one batched `RAGSequence.generate` call and its `RagAnswer`s to
``{"answer", "source_documents"}``. Retrieval, prompts and marginalisation all
stay in the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, model_validator
from typing_extensions import TypedDict

from contextflow_core.generation import DECODERS
from contextflow_core.validation import RAG_RESERVED, as_int, check_generate_kwargs, refuse_unknown

from .retriever import passage_to_document
from .tracing import answer_with_runs


class RAGQuestion(TypedDict):
    """Dict input of `ContextFlowRAG`."""

    question: str


class RAGResult(TypedDict):
    """Output of `ContextFlowRAG`.

    Attributes:
        answer: The generated answer (never the prompt).
        source_documents: The K retrieved passages, highest posterior weight p(z|x,y) first;
            each has the weight in ``metadata["weight"]`` and the passage id as ``id``.
    """

    answer: str
    source_documents: list[Document]


RAGInput = str | RAGQuestion

_TOOL_DESCRIPTION = (
    "Answers a question from the indexed documents with retrieval-augmented generation. "
    "Input: the question as plain text. Output: the answer and the source documents."
)


#: Conventional names from other components, refused with the ContextFlowRAG name to use.
_RENAMES = {
    "max_tokens": "max_new_tokens",
    "k": "num_docs",
    "similarity_top_k": "num_docs",
    "search_kwargs": "num_docs",
}
#: generate() arguments that are ContextFlowRAG fields or set by RAG decoding.
_RESERVED = {
    **RAG_RESERVED,
    "questions": "pass the question as the input",
    "num_docs": "pass it as ContextFlowRAG(num_docs=...) or invoke(..., num_docs=...)",
    "max_new_tokens": "pass it as ContextFlowRAG(max_new_tokens=...) or invoke(..., max_new_tokens=...)",
    "decoding": "pass it as ContextFlowRAG(decoding=...) or invoke(..., decoding=...)",
}


def _own_options(values: dict[str, Any], none_ok: tuple[str, ...] = ()) -> dict[str, Any]:
    """The num_docs / max_new_tokens / decoding found in `values`, type-checked (numpy ints accepted)."""
    out: dict[str, Any] = {}
    for name in ("num_docs", "max_new_tokens"):
        if name in values:
            out[name] = as_int(name, values[name], none_ok=name in none_ok)
    if "decoding" in values:
        if values["decoding"] not in DECODERS:
            raise ValueError(f"decoding: expected one of {sorted(DECODERS)}, got {values['decoding']!r}")
        out["decoding"] = values["decoding"]
    return out


def question_of(value: Any, where: str = "input") -> str:
    """The question text of one `ContextFlowRAG` input, or ValueError naming `where`."""
    question = value.get("question") if isinstance(value, dict) else value
    if isinstance(value, dict) and "question" not in value:
        raise ValueError(f"{where}: expected a dict with a 'question' key, got keys {sorted(value)}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: expected a non-empty question string or {{'question': str}}, got {value!r}")
    return question


def _to_result(answer: Any) -> RAGResult:
    """A `RagAnswer` as ``{"answer", "source_documents"}`` (weights in the documents' metadata)."""
    return RAGResult(
        answer=answer.text, source_documents=[passage_to_document(p, weight=float(w)) for p, w in answer.sources]
    )


def _traced(managers: Sequence[CallbackManagerForChainRun] | None) -> bool:
    """Whether a callback handler would see the call's child runs (then it is not batched)."""
    return bool(managers) and any(m.get_child().handlers for m in managers)  # type: ignore[union-attr]


class ContextFlowRAG(RunnableSerializable[RAGInput, RAGResult]):
    """Answer questions with RAG-Sequence decoding, as an LCEL-composable Runnable.

    Input: a question string or ``{"question": str}``. Output: ``{"answer": str,
    "source_documents": [Document]}`` (see `RAGResult`). `batch`/`abatch` answer all
    inputs in one `RAGSequence.generate` call; `stream` yields the whole result as one
    chunk, because RAG-Sequence picks the answer only after scoring every candidate
    against every passage.

    One bad input fails only its own slot: each question is checked (and its prompt
    frame measured against `PromptConfig.max_length`) before the batched call, and if
    that call still fails with a ValueError the inputs are answered one by one. With
    ``return_exceptions=True`` the bad slot holds its error; without, the error raised
    names the slot (``inputs[i]: ...``).

    Args:
        model: A `RAGSequence` (e.g. `FinetuneResult.model`).
        num_docs: K passages per question; None: the model's default.
        max_new_tokens: Token budget of an answer.
        decoding: "thorough", "fast" or "concat" (see `contextflow_core.generation`).
        generate_kwargs: More `RAGSequence.generate` arguments (e.g. ``num_beams``),
            checked at construction.
        batching: Answer concurrent `invoke`/`ainvoke` calls (threads, asyncio tasks) in shared
            `generate` calls through the model's `RequestBatcher` (`RAGSequence.batcher()`), with
            the same answers and sources as one call each. Used only while no callback handler
            traces the call (a traced call keeps its retriever and per-pass LLM runs); False: one
            call per `invoke`. `batch`/`abatch` are one call either way.

    Keyword arguments of `invoke`/`batch` (``num_docs``, ``max_new_tokens``, ``decoding``,
    HF generate arguments) override these for one call; an unknown one is an error.

    Example:
        >>> chain = ContextFlowRAG(model=rag, num_docs=3) | (lambda out: out["answer"])  # doctest: +SKIP
        >>> chain.invoke("Who founded Tarsk?")  # doctest: +SKIP
        'Ilo'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Any = Field(repr=False)
    num_docs: int | None = None
    max_new_tokens: int = 128
    decoding: str = "thorough"
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    batching: bool = True

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            refuse_unknown(cls.__name__, data, cls.model_fields, _RENAMES)
            data = {**data, **_own_options(data, none_ok=("num_docs",))}
        return data

    @model_validator(mode="after")
    def _check(self):
        if not (callable(getattr(self.model, "generate", None)) and callable(getattr(self.model, "retrieve", None))):
            raise ValueError(f"model: expected a RAGSequence, got {type(self.model).__name__}")
        self.generate_kwargs = check_generate_kwargs(self.generate_kwargs, owner="generate_kwargs", reserved=_RESERVED)
        return self

    @property
    def InputType(self) -> type:  # noqa: N802 - LangChain's name
        """A question string or ``{"question": str}`` (`RAGInput`)."""
        return RAGInput  # type: ignore[return-value]

    @property
    def OutputType(self) -> type:  # noqa: N802 - LangChain's name
        """``{"answer": str, "source_documents": [Document]}`` (`RAGResult`)."""
        return RAGResult

    def as_tool(
        self,
        args_schema: type | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        arg_types: dict[str, type] | None = None,
    ) -> BaseTool:
        """This RAG chain as a LangChain tool whose input is the question as plain text.

        Without `args_schema` / `arg_types` the tool takes one string (an agent passes the
        question) and returns the `RAGResult`; with them, LangChain's `Runnable.as_tool`
        applies unchanged.

        Args:
            args_schema: LangChain's argument schema (a dict input such as ``{"question": str}``).
            name: Tool name; default "ContextFlowRAG".
            description: What the tool does, for the calling model; default: a sentence on
                answering from the indexed documents.
            arg_types: LangChain's argument types for a dict input.

        Example:
            >>> tool = ContextFlowRAG(model=rag).as_tool(name="docs_qa")  # doctest: +SKIP
            >>> tool.invoke("Who founded Tarsk?")["answer"]  # doctest: +SKIP
        """
        if args_schema is not None or arg_types is not None:
            return super().as_tool(args_schema, name=name, description=description, arg_types=arg_types)
        return self.with_types(input_type=str).as_tool(
            name=name or self.get_name(), description=description or _TOOL_DESCRIPTION
        )

    # -- core call -------------------------------------------------------------------
    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """`generate` arguments of one call: the fields, overridden by valid per-call keywords."""
        for name in overrides:
            if name in _RENAMES:
                refuse_unknown(f"{type(self).__name__}.invoke", [name], (), _RENAMES)
        own = {
            "num_docs": self.num_docs,
            "max_new_tokens": self.max_new_tokens,
            "decoding": self.decoding,
            **_own_options(overrides, none_ok=("num_docs",)),
        }
        extra = {k: v for k, v in overrides.items() if k not in own}
        reserved = {k: v for k, v in _RESERVED.items() if k not in own}
        return {
            **own,
            **check_generate_kwargs(
                {**self.generate_kwargs, **extra}, owner=f"{type(self).__name__}.invoke", reserved=reserved, also=own
            ),
        }

    def _answer(
        self,
        questions: list[str],
        options: dict[str, Any],
        managers: Sequence[CallbackManagerForChainRun] | None = None,
    ) -> list[RAGResult]:
        """One `generate` call (it holds the model's lock); with run managers, traced (see `tracing`)."""
        if self.batching and len(questions) == 1 and not _traced(managers) and hasattr(self.model, "batcher"):
            answers = [self.model.batcher().generate(questions[0], **options)]  # shared with concurrent calls
        elif managers:
            answers = answer_with_runs(self.model, questions, options, managers)
        else:
            answers = self.model.generate(questions=questions, **options)
        return [_to_result(a) for a in answers]

    def _question(self, value: Any, where: str) -> str:
        """The question of one input, refused (naming `where`) when its prompt frame cannot fit."""
        question = question_of(value, where)
        prompts = getattr(self.model, "prompts", None)
        if prompts is not None:
            try:
                prompts.encode(question, [])  # the frame alone: a question too long for max_length fails here
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from e
        return question

    def _answer_each(
        self,
        questions: list[str],
        slots: list[int],
        options: dict[str, Any],
        managers: list[CallbackManagerForChainRun] | None = None,
    ) -> list[RAGResult | Exception]:
        """One batched call; if it fails with a ValueError, one call per question (errors in their slots)."""
        try:
            return self._answer(questions, options, managers)  # type: ignore[return-value]
        except ValueError:
            pass
        results: list[RAGResult | Exception] = []
        for i, (slot, question) in enumerate(zip(slots, questions, strict=True)):
            try:
                results.append(self._answer([question], options, managers[i : i + 1] if managers else None)[0])
            except ValueError as e:
                results.append(ValueError(f"inputs[{slot}]: {e}"))
        return results

    def _batch(
        self, inputs: list[RAGInput], run_manager: list[CallbackManagerForChainRun] | None = None, **overrides: Any
    ) -> list[RAGResult | Exception]:
        """Answer the valid inputs in one call; an invalid input gets its ValueError in its slot."""
        options = self._options(overrides)  # a bad option applies to every slot: the whole call fails
        outputs: list[RAGResult | Exception | str] = []
        for i, value in enumerate(inputs):
            try:
                outputs.append(self._question(value, f"inputs[{i}]"))
            except ValueError as e:
                outputs.append(e)
        valid = [i for i, out in enumerate(outputs) if isinstance(out, str)]
        if valid:
            managers = [run_manager[i] for i in valid] if run_manager else None
            results = self._answer_each([outputs[i] for i in valid], valid, options, managers)  # type: ignore[misc]
            for i, result in zip(valid, results, strict=True):
                outputs[i] = result
        return outputs  # type: ignore[return-value]

    # -- Runnable interface ------------------------------------------------------------
    def invoke(self, input: RAGInput, config: RunnableConfig | None = None, **kwargs: Any) -> RAGResult:
        """Answer one question."""
        options = self._options(kwargs)
        return self._call_with_config(
            lambda value, run_manager: self._answer([question_of(value)], options, [run_manager])[0], input, config
        )

    def batch(
        self,
        inputs: list[RAGInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[RAGResult]:
        """Answer every input with one batched `generate` call."""
        if not inputs:
            return []
        return self._batch_with_config(
            lambda values, run_manager: self._batch(values, run_manager, **kwargs),
            list(inputs),
            config,
            return_exceptions=return_exceptions,
        )

    async def ainvoke(self, input: RAGInput, config: RunnableConfig | None = None, **kwargs: Any) -> RAGResult:
        """Answer one question from asyncio: awaited on the model's `RequestBatcher` (no thread per call)
        while `batching` is on and nothing traces the call; else `invoke` in a worker thread."""
        if not (self.batching and hasattr(self.model, "batcher")):
            return await run_in_executor(config, self.invoke, input, config, **kwargs)
        options = self._options(kwargs)

        async def answer(value: Any, run_manager: Any) -> RAGResult:
            question = question_of(value)
            if _traced([run_manager]):  # runs need the synchronous, recorded path
                sync = run_manager.get_sync()
                return (await run_in_executor(None, self._answer, [question], options, [sync]))[0]
            return _to_result(await self.model.batcher().agenerate(question, **options))

        return await self._acall_with_config(answer, input, config)

    async def abatch(
        self,
        inputs: list[RAGInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[RAGResult]:
        """`batch` (one `generate` call) in a worker thread."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first if isinstance(first, dict) else None,
            self.batch,
            inputs,
            config,
            return_exceptions=return_exceptions,
            **kwargs,
        )
