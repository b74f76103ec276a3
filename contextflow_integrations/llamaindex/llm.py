"""ContextFlowLLM: the ContextFlow generator alone as a LlamaIndex `CustomLLM`.

Boundary: conversion and delegation only. A prompt (or, through the base class,
a chat) becomes one `generate` call of the HF causal LM; no retrieval. Use it
where LlamaIndex needs an LLM (a response synthesizer, an agent) and the
fine-tuned generator should answer; `ContextFlowQueryEngine` is the RAG path.

Prompts: when the tokenizer has a chat template (and `use_chat_template` is not
False), `complete(prompt)` renders the prompt as one user turn (after a system
turn when `system_prompt` is set) with the generation prompt appended, and the
base class's `chat` renders the whole conversation with the same template, so
instruction-tuned generators (SmolLM2-Instruct, the default) see the format they
were trained on. Without a template, prompts go in as given (`system_prompt`
prepended) and `chat` uses LlamaIndex's generic "role: content" rendering.
`complete(..., formatted=True)` skips the rendering. Prompts longer than
`context_window - max_new_tokens` tokens keep their end (with a warning).

Decoding: `temperature` 0 (the default) is greedy; above 0 samples with it.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from contextflow_core.modes import eval_mode
from contextflow_core.validation import as_int, as_number, check_generate_kwargs, refuse_unknown, take_alias

__all__ = ["ContextFlowLLM"]

_MAX_SANE_LENGTH = 1_000_000  # tokenizers without a limit report ~1e30

#: generate() arguments the LLM sets itself -> the field or keyword to use instead.
_RESERVED = {
    "input_ids": "pass the prompt",
    "attention_mask": "pass the prompt",
    "max_new_tokens": "pass max_new_tokens= (or max_tokens=) itself",
    "max_length": "pass max_new_tokens=",
    "temperature": "pass temperature= itself",
    "do_sample": "set temperature > 0 to sample",
    "streamer": "use stream_complete()",
}


def _check_fields(cls: type[BaseModel], kwargs: dict) -> dict:
    """Constructor keywords: `max_tokens` (OpenAI's name) as `max_new_tokens`, unknown names and types refused."""
    kwargs = take_alias(kwargs, "max_tokens", "max_new_tokens", cls.__name__)
    refuse_unknown(cls.__name__, kwargs, set(cls.model_fields) | {"model", "tokenizer"})
    checks = {
        "max_new_tokens": lambda v: as_int("max_new_tokens", v),
        "context_window": lambda v: as_int("context_window", v, minimum=0),
        "temperature": lambda v: as_number("temperature", v, low=0.0, low_open=False),
    }
    kwargs = {**kwargs, **{n: check(kwargs[n]) for n, check in checks.items() if n in kwargs}}
    if isinstance(kwargs.get("generate_kwargs"), dict):
        kwargs["generate_kwargs"] = check_generate_kwargs(
            kwargs["generate_kwargs"],
            owner="generate_kwargs",
            reserved=_RESERVED,
            sampling=kwargs.get("temperature", 0.0) > 0,
        )
    return kwargs


def _generator_and_tokenizer(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if hasattr(model, "generator") and hasattr(model, "generator_tokenizer"):  # a RAGSequence
        return model.generator, tokenizer or model.generator_tokenizer
    if not hasattr(model, "generate"):
        raise ValueError(f"model: expected a RAGSequence or a HF causal LM, got {type(model).__name__}")
    if tokenizer is None:
        raise ValueError("tokenizer: expected the generator's tokenizer with a HF causal LM, got None")
    return model, tokenizer


class _ChatTemplate:
    """A prompt function that renders through the LLM's chat template.

    A named callable rather than a bound method, so that the LLM's repr (which
    shows its prompt-function fields) does not recurse into itself.
    """

    def __init__(self, render) -> None:
        self._render = render

    def __call__(self, value):
        return self._render(value)

    def __repr__(self) -> str:
        return "<tokenizer chat template>"


def _default_context_window(generator: Any, tokenizer: Any) -> int:
    config = getattr(generator, "config", None)
    for value in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and 0 < value < _MAX_SANE_LENGTH:
            return value
    return 2048


class ContextFlowLLM(CustomLLM):
    """The (fine-tuned) ContextFlow generator as a LlamaIndex LLM.

    Args:
        model: A RAGSequence (its `generator` and `generator_tokenizer` are used) or a HF causal LM.
        tokenizer: The generator's tokenizer; needed with a bare causal LM.
        max_new_tokens: Token budget of a completion (reported as `metadata.num_output`);
            `max_tokens` (OpenAI's name) is accepted as the same setting, here and per call.
        temperature: 0 for greedy decoding, > 0 to sample at this temperature.
        context_window: Prompt + completion budget in tokens; 0: the generator's
            `max_position_embeddings` (else the tokenizer's `model_max_length`, else 2048).
        use_chat_template: True/False forces it; None uses the tokenizer's template when it has one.
        generate_kwargs: Extra keyword arguments of every `generate` call (top_p, repetition_penalty, ...).
        **kwargs: LlamaIndex LLM fields (system_prompt, callback_manager, messages_to_prompt, ...);
            any other name is refused, listing the accepted ones.

    `complete(prompt, **kwargs)` takes `max_new_tokens` / `max_tokens`, `temperature` and
    HF generate arguments (checked by name and value; sampling ones need temperature > 0).

    Example:
        >>> llm = ContextFlowLLM(rag, max_new_tokens=32)  # doctest: +SKIP
        >>> llm.complete("Who founded Tarsk?").text  # doctest: +SKIP
        'Ilo Varn'
    """

    model_name: str = Field(default="", description="The generator's name or path.")
    context_window: int = Field(default=0, ge=0, description="Prompt + completion budget in tokens.")
    max_new_tokens: int = Field(default=256, gt=0, description="Token budget of a completion.")
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy; > 0: sampling temperature.")
    use_chat_template: bool | None = Field(default=None, description="Render prompts with the chat template.")
    generate_kwargs: dict = Field(default_factory=dict, description="Extra arguments of generate().")

    _generator: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _templated: bool = PrivateAttr(default=False)

    def __init__(self, model: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        kwargs = _check_fields(type(self), kwargs)
        generator, tokenizer = _generator_and_tokenizer(model, tokenizer)
        config = getattr(generator, "config", None)
        kwargs.setdefault("model_name", str(getattr(config, "_name_or_path", "") or type(generator).__name__))
        if not kwargs.get("context_window"):
            kwargs["context_window"] = _default_context_window(generator, tokenizer)
        templated = kwargs.get("use_chat_template") is not False and bool(getattr(tokenizer, "chat_template", None))
        if kwargs.get("use_chat_template") and not templated:
            raise ValueError("use_chat_template: True needs a tokenizer with a chat template, got one without")
        if templated:
            kwargs.setdefault("messages_to_prompt", _ChatTemplate(self._template_messages_to_prompt))
            kwargs.setdefault("completion_to_prompt", _ChatTemplate(self._template_completion_to_prompt))
        super().__init__(**kwargs)
        if self.max_new_tokens >= self.context_window:
            raise ValueError(
                f"max_new_tokens: expected fewer than context_window ({self.context_window}) "
                f"tokens, got {self.max_new_tokens}"
            )
        self._generator, self._tokenizer, self._templated = generator, tokenizer, templated

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialization name."""
        return "ContextFlowLLM"

    @property
    def metadata(self) -> LLMMetadata:
        """Context window, output budget and model name, as LlamaIndex reads them."""
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            model_name=self.model_name,
            is_chat_model=False,
        )

    # -- prompts ------------------------------------------------------------------------
    def _render(self, turns: list[dict]) -> str:
        if self.system_prompt and not any(t["role"] == "system" for t in turns):
            turns = [{"role": "system", "content": self.system_prompt}] + turns
        return self._tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def _template_messages_to_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self._render([{"role": m.role.value, "content": m.content or ""} for m in messages])

    def _template_completion_to_prompt(self, prompt: str) -> str:
        return self._render([{"role": "user", "content": prompt}])

    def _extend_prompt(self, formatted_prompt: str) -> str:
        """As the base class (used by `predict`), but a chat template already holds the system prompt."""
        if not self._templated:
            return super()._extend_prompt(formatted_prompt)
        if self.query_wrapper_prompt:
            return self.query_wrapper_prompt.format(query_str=formatted_prompt)
        return formatted_prompt

    def _full_prompt(self, prompt: str, formatted: bool) -> str:
        if formatted:
            return prompt
        if not self._templated and self.system_prompt:
            prompt = f"{self.system_prompt}\n\n{prompt}"
        to_prompt = self.completion_to_prompt  # LlamaIndex fills in its identity default
        return to_prompt(prompt) if to_prompt is not None else prompt

    # -- generation ---------------------------------------------------------------------
    def _inputs(self, prompt: str, max_new_tokens: int) -> dict:
        encoded = self._tokenizer(prompt, return_tensors="pt", add_special_tokens=not self._templated)
        budget = self.context_window - max_new_tokens
        if encoded["input_ids"].shape[1] > budget:
            warnings.warn(
                f"prompt: {encoded['input_ids'].shape[1]} tokens exceed context_window - max_new_tokens "
                f"= {budget}; keeping the last {budget}",
                stacklevel=4,
            )
            encoded = {k: v[:, -budget:] for k, v in encoded.items()}
        device = next(self._generator.parameters()).device
        return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    def _generate_kwargs(self, kwargs: dict) -> tuple[int, dict]:
        """Per-call keywords over the fields, checked: (max_new_tokens, generate arguments)."""
        owner = f"{type(self).__name__}.complete"
        kwargs = take_alias(dict(kwargs), "max_tokens", "max_new_tokens", owner)
        max_new_tokens = as_int("max_new_tokens", kwargs.pop("max_new_tokens", self.max_new_tokens))
        if max_new_tokens >= self.context_window:
            raise ValueError(
                f"max_new_tokens: expected fewer than context_window ({self.context_window}) "
                f"tokens, got {max_new_tokens}"
            )
        temperature = as_number("temperature", kwargs.pop("temperature", self.temperature), low=0.0, low_open=False)
        kwargs = check_generate_kwargs(
            {**self.generate_kwargs, **kwargs},
            owner=owner,
            reserved=_RESERVED,
            sampling=temperature > 0,
            also=("max_new_tokens", "max_tokens", "temperature"),
        )
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        pad = self._tokenizer.pad_token_id
        kwargs.setdefault("pad_token_id", self._tokenizer.eos_token_id if pad is None else pad)
        return max_new_tokens, {"max_new_tokens": max_new_tokens, **kwargs}

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete `prompt` (rendered unless `formatted`); kwargs override generate arguments."""
        max_new_tokens, gen_kwargs = self._generate_kwargs(kwargs)
        inputs = self._inputs(self._full_prompt(prompt, formatted), max_new_tokens)
        with eval_mode(self._generator):  # no dropout; the generator's own modes come back after
            output = self._generator.generate(**inputs, **gen_kwargs)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
        return CompletionResponse(
            text=text,
            raw={"prompt_tokens": int(inputs["input_ids"].shape[1]), "completion_tokens": int(new_tokens.shape[0])},
        )

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream the completion of `prompt`: each response holds the text so far and its `delta`."""
        from transformers import TextIteratorStreamer

        max_new_tokens, gen_kwargs = self._generate_kwargs(kwargs)
        inputs = self._inputs(self._full_prompt(prompt, formatted), max_new_tokens)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with eval_mode(self._generator):
                    self._generator.generate(**inputs, **gen_kwargs, streamer=streamer)
            except BaseException as e:  # re-raised in the consumer below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def gen() -> CompletionResponseGen:
            text = ""
            for delta in streamer:
                if delta:
                    text += delta
                    yield CompletionResponse(text=text, delta=delta)
            thread.join()
            if errors:
                raise errors[0]

        return gen()
