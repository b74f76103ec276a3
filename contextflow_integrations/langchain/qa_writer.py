"""A LangChain chat model or LLM as a question writer of `contextflow_core.data.generate_qa`.

Boundary: conversion only. A `BaseChatModel`, `BaseLLM` (or any `Runnable` taking a
string) becomes a callable ``prompt -> text`` with a ``batch`` method (LangChain's own
``batch``, errors per prompt) and a ``cache_id`` naming the model and its settings.

Example:
    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> writer = LangChainQuestionWriter(FakeListChatModel(responses=["Who founded Tarsk?"]))
    >>> writer("Passage: Ilo Varn founded Tarsk.\\nAnswer: Ilo Varn\\nQuestion:")
    'Who founded Tarsk?'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import Runnable

__all__ = ["LangChainQuestionWriter", "as_question_writer"]


def _text(output: Any) -> Any:
    """The text of a model's output (a str, an AIMessage); anything else is returned as is."""
    if isinstance(output, (str, BaseException)):
        return output
    content = getattr(output, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text ones
        parts = [
            b if isinstance(b, str) else b.get("text", "")
            for b in content
            if isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text")
        ]
        return "".join(parts)
    return output


class LangChainQuestionWriter:
    """A LangChain chat model / LLM / string Runnable as a `generate_qa` writer.

    Args:
        model: A `BaseChatModel`, `BaseLLM`, or any `Runnable` that takes the prompt string.

    Raises:
        TypeError: `model` is not a LangChain Runnable.
    """

    def __init__(self, model: Any) -> None:
        if not isinstance(model, Runnable):
            raise TypeError(f"model: expected a LangChain chat model, LLM or Runnable, got {type(model).__name__}")
        self.model = model

    @property
    def cache_id(self) -> str:
        """``langchain:<class>:<hash of the model's identifying parameters>`` (part of generate_qa's cache keys)."""
        params = getattr(self.model, "_identifying_params", None)
        params = params if isinstance(params, dict) else {}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        return f"langchain:{type(self.model).__name__}:{digest[:16]}"

    def __call__(self, prompt: str) -> Any:
        """The model's reply to `prompt` as text (the prompt is sent as one human message to a chat model)."""
        return _text(self.model.invoke(prompt))

    def batch(self, prompts: Sequence[str]) -> list[Any]:
        """Replies to `prompts` through the model's own ``batch``; a failed prompt gives its exception."""
        return [_text(out) for out in self.model.batch(list(prompts), return_exceptions=True)]

    def __repr__(self) -> str:
        return f"LangChainQuestionWriter({type(self.model).__name__})"


def as_question_writer(question_llm: Any) -> Any:
    """A `generate_qa` writer from `question_llm`.

    Args:
        question_llm: None (the embedded writer), a writer name ("embedded", "cloze"), a
            LangChain chat model / LLM / Runnable, or a callable ``prompt -> text``.

    Returns:
        What `generate_qa(writer=...)` takes.

    Raises:
        TypeError: Any other type (the message names `question_llm`).
    """
    if question_llm is None or isinstance(question_llm, str):
        return question_llm
    if isinstance(question_llm, Runnable):
        return LangChainQuestionWriter(question_llm)
    if callable(question_llm) and not isinstance(question_llm, type):
        return question_llm
    raise TypeError(
        f"question_llm: expected None, a writer name ('embedded', 'cloze'), a LangChain chat model "
        f"or LLM, or a callable prompt -> text, got {type(question_llm).__name__}"
    )
