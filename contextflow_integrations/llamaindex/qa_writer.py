"""A LlamaIndex LLM as a question writer of `contextflow_core.data.generate_qa`.

Boundary: conversion only. Any `llama_index.core.llms.LLM` (OpenAI, Ollama, HuggingFaceLLM,
`MockLLM`, ContextFlow's own `ContextFlowLLM`, ...) becomes a callable ``prompt -> text``
through ``llm.complete(prompt).text``, with a ``cache_id`` naming the class and model.

Example:
    >>> from llama_index.core.llms import MockLLM
    >>> LlamaIndexQuestionWriter(MockLLM(max_tokens=2))("Passage: ...")
    'text text'
"""

from __future__ import annotations

from typing import Any

from llama_index.core.llms import LLM

__all__ = ["LlamaIndexQuestionWriter", "as_question_writer"]


class LlamaIndexQuestionWriter:
    """A LlamaIndex LLM as a `generate_qa` writer (one ``complete`` call per prompt).

    Args:
        llm: A `llama_index.core.llms.LLM`.

    Raises:
        TypeError: `llm` is not a LlamaIndex LLM.
    """

    def __init__(self, llm: Any) -> None:
        if not isinstance(llm, LLM):
            raise TypeError(f"llm: expected a llama_index.core.llms.LLM, got {type(llm).__name__}")
        self.llm = llm

    @property
    def cache_id(self) -> str:
        """``llamaindex:<class>:<model name>:<max output tokens>`` (part of generate_qa's cache keys)."""
        meta = self.llm.metadata
        return f"llamaindex:{type(self.llm).__name__}:{meta.model_name}:{meta.num_output}"

    def __call__(self, prompt: str) -> Any:
        """The LLM's completion of `prompt` (its ``.text``)."""
        return self.llm.complete(prompt).text

    def __repr__(self) -> str:
        return f"LlamaIndexQuestionWriter({type(self.llm).__name__})"


def as_question_writer(question_llm: Any) -> Any:
    """A `generate_qa` writer from `question_llm`.

    Args:
        question_llm: None (the embedded writer), a writer name ("embedded", "cloze"), a
            LlamaIndex LLM, or a callable ``prompt -> text``.

    Returns:
        What `generate_qa(writer=...)` takes.

    Raises:
        TypeError: Any other type (the message names `question_llm`).
    """
    if question_llm is None or isinstance(question_llm, str):
        return question_llm
    if isinstance(question_llm, LLM):
        return LlamaIndexQuestionWriter(question_llm)
    if callable(question_llm) and not isinstance(question_llm, type):
        return question_llm
    raise TypeError(
        f"question_llm: expected None, a writer name ('embedded', 'cloze'), a LlamaIndex LLM, "
        f"or a callable prompt -> text, got {type(question_llm).__name__}"
    )
