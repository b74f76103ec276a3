"""The `PromptConfig` of a RAGSequence as LlamaIndex prompts (the query engine's PromptMixin).

Boundary: converts between `contextflow_core.config.PromptConfig` fields and LlamaIndex
`PromptTemplate`s; the core `PromptBuilder` still renders f(x, z) (and validates the
templates). Each key is a `PromptConfig` field:

    system_prompt             the system turn ("" when there is none)
    instruction               put before the passage in the user turn
    user_format               the user turn: {instruction}, {passages}, {question}
    question_format           the question: {question}
    passage_format            one titled passage: {title}, {text}
    passage_format_untitled   one passage without a title: {text}
    passage_separator         between passages in one "concat" prompt
    answer_prefix             after the user turn in plain (no chat template) prompts

Templates use Python's ``{name}`` placeholders in both libraries, so a template reads the
same in `get_prompts()` and in the model's `PromptConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llama_index.core.prompts import BasePromptTemplate, PromptTemplate

from contextflow_core.config import PromptConfig
from contextflow_core.locks import model_lock
from contextflow_core.prompts import PromptBuilder
from contextflow_core.validation import refuse_unknown

__all__ = ["PROMPT_KEYS", "config_prompts", "update_model_prompts"]

PROMPT_KEYS = (
    "system_prompt",
    "instruction",
    "user_format",
    "question_format",
    "passage_format",
    "passage_format_untitled",
    "passage_separator",
    "answer_prefix",
)


def config_prompts(config: PromptConfig) -> dict[str, PromptTemplate]:
    """Each `PromptConfig` text field as a `PromptTemplate` (system_prompt None -> "")."""
    return {key: PromptTemplate(getattr(config, key) or "") for key in PROMPT_KEYS}


def _template_text(key: str, value: Any) -> str:
    """The template string of one `update_prompts` value (a `PromptTemplate` or a string)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, PromptTemplate):
        kind = "a chat template" if isinstance(value, BasePromptTemplate) else type(value).__name__
        raise ValueError(
            f"update_prompts[{key!r}]: expected a PromptTemplate or a string, got {kind}; "
            "ContextFlow renders the chat turns itself from the generator's chat template"
        )
    if value.kwargs or value.template_var_mappings or value.function_mappings:
        raise ValueError(
            f"update_prompts[{key!r}]: expected a plain PromptTemplate, got one with partial "
            "variables or variable/function mappings; ContextFlow fills the placeholders itself, so "
            "write the final template text"
        )
    return value.template


def update_model_prompts(model: Any, prompts: dict[str, Any], owner: str) -> None:
    """Set the RAGSequence's `PromptConfig` fields named in `prompts` (validated; others kept).

    Keys holding ":" (sub-module prompts) are left to LlamaIndex's `PromptMixin`.

    Raises:
        UnknownArgumentError: A key is not a `PromptConfig` field (the message lists them).
        ValueError: A value is not a plain template or string, or the new `PromptConfig` is
            invalid (e.g. `user_format` without ``{question}``).
    """
    own = {k: v for k, v in prompts.items() if ":" not in k}
    refuse_unknown(f"{owner}.update_prompts", own, PROMPT_KEYS)
    values: dict[str, Any] = {k: _template_text(k, v) for k, v in own.items()}
    if "system_prompt" in values and not values["system_prompt"].strip():
        values["system_prompt"] = None
    with model_lock(model):  # not while a generate call is rendering prompts
        config = dataclasses.replace(model.prompt_config, **values)  # PromptConfig checks the templates
        model.prompts = PromptBuilder(model.generator_tokenizer, config)
