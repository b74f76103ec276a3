"""ContextFlowRAG: a RAG-Sequence model as a LangChain Runnable.

Boundary: converts LangChain inputs (a question string or ``{"question": ...}``)
to one batched `RAGSequence.generate` call and its `RagAnswer`s to
``{"answer", "source_documents"}``. Retrieval, prompts and marginalisation all
stay in the core.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, model_validator
from typing_extensions import TypedDict

from contextflow_core.generation import DECODERS

from .retriever import passage_to_document


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


RAGInput = Union[str, RAGQuestion]


def question_of(value: Any, where: str = "input") -> str:
    """The question text of one `ContextFlowRAG` input, or ValueError naming `where`."""
    question = value.get("question") if isinstance(value, dict) else value
    if isinstance(value, dict) and "question" not in value:
        raise ValueError(f"{where}: expected a dict with a 'question' key, got keys {sorted(value)}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: expected a non-empty question string or {{'question': str}}, got {value!r}")
    return question


class ContextFlowRAG(RunnableSerializable[RAGInput, RAGResult]):
    """Answer questions with RAG-Sequence decoding, as an LCEL-composable Runnable.

    Input: a question string or ``{"question": str}``. Output: ``{"answer": str,
    "source_documents": [Document]}`` (see `RAGResult`). `batch`/`abatch` answer all
    inputs in one `RAGSequence.generate` call; `stream` yields the whole result as one
    chunk, because RAG-Sequence picks the answer only after scoring every candidate
    against every passage.

    Args:
        model: A `RAGSequence` (e.g. `FinetuneResult.model`).
        num_docs: K passages per question; None: the model's default.
        max_new_tokens: Token budget of an answer.
        decoding: "thorough", "fast" or "concat" (see `contextflow_core.generation`).
        generate_kwargs: More `RAGSequence.generate` arguments (e.g. ``num_beams``).

    Keyword arguments of `invoke`/`batch` (``num_docs``, ``max_new_tokens``, ``decoding``,
    ...) override these for one call.

    Example:
        >>> chain = ContextFlowRAG(model=rag, num_docs=3) | (lambda out: out["answer"])  # doctest: +SKIP
        >>> chain.invoke("Who founded Tarsk?")  # doctest: +SKIP
        'Ilo'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(repr=False)
    num_docs: Optional[int] = None
    max_new_tokens: int = 128
    decoding: str = "thorough"
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        if not (callable(getattr(self.model, "generate", None)) and callable(getattr(self.model, "retrieve", None))):
            raise ValueError(f"model: expected a RAGSequence, got {type(self.model).__name__}")
        if self.decoding not in DECODERS:
            raise ValueError(f"decoding: expected one of {sorted(DECODERS)}, got {self.decoding!r}")
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: expected a positive integer, got {self.max_new_tokens!r}")
        return self

    @property
    def InputType(self) -> type:  # noqa: N802 - LangChain's name
        return RAGInput  # type: ignore[return-value]

    @property
    def OutputType(self) -> type:  # noqa: N802 - LangChain's name
        return RAGResult

    # -- core call -------------------------------------------------------------------
    def _answer(self, questions: list[str], **overrides: Any) -> list[RAGResult]:
        options = {"num_docs": self.num_docs, "max_new_tokens": self.max_new_tokens, "decoding": self.decoding,
                   **self.generate_kwargs, **overrides}
        answers = self.model.generate(questions=questions, **options)  # generate holds the model's lock
        return [RAGResult(answer=a.text,
                          source_documents=[passage_to_document(p, weight=float(w)) for p, w in a.sources])
                for a in answers]

    def _batch(self, inputs: list[RAGInput], **overrides: Any) -> list[Union[RAGResult, Exception]]:
        """Answer the valid inputs in one call; an invalid input gets its ValueError in its slot."""
        outputs: list[Union[RAGResult, Exception]] = []
        for i, value in enumerate(inputs):
            try:
                outputs.append(question_of(value, f"inputs[{i}]"))  # type: ignore[arg-type]
            except ValueError as e:
                outputs.append(e)
        valid = [i for i, out in enumerate(outputs) if isinstance(out, str)]
        if valid:
            for i, result in zip(valid, self._answer([outputs[i] for i in valid], **overrides)):  # type: ignore[misc]
                outputs[i] = result
        return outputs

    # -- Runnable interface ------------------------------------------------------------
    def invoke(self, input: RAGInput, config: Optional[RunnableConfig] = None, **kwargs: Any) -> RAGResult:
        """Answer one question."""
        return self._call_with_config(lambda value: self._answer([question_of(value)], **kwargs)[0], input, config)

    def batch(self, inputs: list[RAGInput], config: Optional[Union[RunnableConfig, list[RunnableConfig]]] = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[RAGResult]:
        """Answer every input with one batched `generate` call."""
        if not inputs:
            return []
        return self._batch_with_config(lambda values: self._batch(values, **kwargs), list(inputs), config,
                                       return_exceptions=return_exceptions)

    async def ainvoke(self, input: RAGInput, config: Optional[RunnableConfig] = None, **kwargs: Any) -> RAGResult:
        """`invoke` in a worker thread."""
        return await run_in_executor(config, self.invoke, input, config, **kwargs)

    async def abatch(self, inputs: list[RAGInput],
                     config: Optional[Union[RunnableConfig, list[RunnableConfig]]] = None,
                     *, return_exceptions: bool = False, **kwargs: Any) -> list[RAGResult]:
        """`batch` (one `generate` call) in a worker thread."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(first if isinstance(first, dict) else None, self.batch, inputs, config,
                                     return_exceptions=return_exceptions, **kwargs)
