"""LangChain chat model and LLM over a ContextFlow generator (no retrieval).

Boundary: converts LangChain messages to the tokenizer's chat template (or a
plain ``Role: text`` transcript when there is none) and delegates decoding to
the HF generator's own ``generate``. Knows nothing of retrieval or prompts
f(x, z): for retrieval-augmented answers use `ContextFlowRAG`.

Example:
    >>> chat = ChatContextFlow.from_rag(result.model, max_tokens=32)  # doctest: +SKIP
    >>> chat.invoke("Who founded Tarsk?").content  # doctest: +SKIP
    'Ilo'
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.language_models.llms import LLM
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, GenerationChunk
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import StoppingCriteriaList

from contextflow_core.modes import eval_mode
from contextflow_core.prompt_tokens import chat_ids

from .conventions import ChatConventions, LLMConventions
from .settings import call_settings, check_fields
from .stops import StopCriteria, TokenQueue, cut_at_stop, held_back

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function"}


@contextmanager
def inference(module: Any) -> Iterator[None]:
    """Hold `module`'s lock and run it in eval mode without gradient (each sub-module's own mode restored after)."""
    with eval_mode(module), torch.no_grad():
        yield


# ----------------------------------------------------------------------------- shared fields and decoding
class _LocalGeneration(BaseModel):
    """Fields and decoding shared by `ChatContextFlow` and `ContextFlowLLM`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    generator: Any = Field(repr=False)
    """A HF causal LM (plain, PEFT-wrapped or quantized), e.g. `RAGSequence.generator`."""
    tokenizer: Any = Field(repr=False)
    """Its tokenizer."""
    model_name: str | None = None
    """Name reported to LangSmith and in response metadata; default: the generator's `name_or_path`."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    max_tokens: int = 256
    """Maximum number of new tokens."""
    top_p: float | None = None
    """Nucleus sampling mass (only when temperature > 0)."""
    stop: list[str] | None = None
    """Stop sequences: text ends before the first one."""
    streaming: bool = False
    """Route `invoke` through `_stream` (so callbacks get every token)."""
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    """More `generator.generate` arguments (e.g. `repetition_penalty`); unknown names are refused."""
    timeout: float | None = None
    """Seconds a call may generate for (HF `max_time`); None: no limit."""
    max_retries: int | None = None
    """Accepted as LangChain's standard parameter; a local generator has nothing to retry (warns when set)."""
    api_key: str | None = Field(default=None, repr=False)
    """Accepted as LangChain's standard parameter; a local generator needs no key (warns when set)."""

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        return check_fields(cls, data)

    @model_validator(mode="after")
    def _check_models(self):
        if not callable(getattr(self.generator, "generate", None)):
            raise ValueError(
                f"generator: expected a HF causal LM with .generate(), got {type(self.generator).__name__}"
            )
        if not callable(self.tokenizer) or not hasattr(self.tokenizer, "decode"):
            raise ValueError(f"tokenizer: expected a HF tokenizer, got {type(self.tokenizer).__name__}")
        if self.model_name is None:
            cfg = getattr(self.generator, "config", None)
            self.model_name = (
                getattr(self.generator, "name_or_path", None)
                or getattr(cfg, "_name_or_path", None)
                or type(self.generator).__name__
            )
        return self

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "stop": self.stop,
            "timeout": self.timeout,
            **self.generate_kwargs,
        }

    def _ls_params(self, model_type: Literal["chat", "llm"], stop: list[str] | None, kwargs: dict) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="contextflow",
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type=model_type,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _settings(
        self, prompt_length: int, stop: list[str] | None, kwargs: dict
    ) -> tuple[list[str], dict, threading.Event]:
        """Stop sequences, `generate` kwargs and a cancel flag for one call."""
        kwargs = dict(kwargs)
        name = kwargs.pop("model", None)
        if name is not None and name != self.model_name:
            raise ValueError(
                f"model: this instance runs the local generator {self.model_name!r}, got {name!r}; "
                "build another instance for another generator"
            )
        stops = [s for s in (stop if stop is not None else self.stop or []) if s]
        max_tokens, temperature, top_p, timeout, kwargs = call_settings(f"{type(self).__name__}.invoke", self, kwargs)
        cancel = threading.Event()
        gen = {
            "max_new_tokens": max_tokens,
            "do_sample": temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id,
            "stopping_criteria": StoppingCriteriaList([StopCriteria(self.tokenizer, prompt_length, stops, cancel)]),
            **kwargs,
        }
        if timeout is not None:
            gen["max_time"] = timeout
        if temperature > 0:
            gen["temperature"] = temperature
            if top_p is not None:
                gen["top_p"] = top_p
        return stops, gen, cancel

    def _inputs(self, text: str, add_special_tokens: bool, literal: bool = False) -> dict[str, torch.Tensor]:
        device = next(self.generator.parameters()).device
        batch = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_tensors="pt", split_special_tokens=literal
        )
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _finish(self, new_ids: list[int], hit_stop: bool, max_new_tokens: int) -> str:
        """ "stop" (EOS or a stop sequence) or "length" (ran out of `max_tokens`)."""
        config = getattr(self.generator, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {self.tokenizer.eos_token_id}
        ended = bool(new_ids) and new_ids[-1] in eos
        return "stop" if hit_stop or ended or len(new_ids) < max_new_tokens else "length"

    def _run(self, inputs: dict, stop: list[str] | None, kwargs: dict) -> tuple[str, dict, UsageMetadata]:
        """Generate once: (text, response metadata, usage)."""
        n_in = inputs["input_ids"].shape[1]
        stops, gen, _ = self._settings(n_in, stop, kwargs)
        with inference(self.generator):
            out = self.generator.generate(**inputs, **gen)
        new_ids = out[0, n_in:].tolist()  # one row: generation ends at EOS, no padding after it
        text, hit = cut_at_stop(self._decode(new_ids), stops)
        meta = {"model_name": self.model_name, "finish_reason": self._finish(new_ids, hit, gen["max_new_tokens"])}
        return text, meta, _usage(n_in, len(new_ids))

    def _text_pieces(self, token_batches: Iterator[list[int]], stops: Sequence[str], ids: list[int]) -> Iterator[str]:
        """Text as token ids arrive (appended to `ids`), ending before the first stop sequence.

        Text that might be the start of a stop sequence, or an incomplete UTF-8
        character, is held back until the next tokens settle it.
        """
        sent = 0
        for new in token_batches:
            ids += new
            text = self._decode(ids)
            if text.endswith("\ufffd"):
                continue
            text, hit = cut_at_stop(text, stops)
            end = len(text) if hit else len(text) - held_back(text, stops)
            if end > sent:
                yield text[sent:end]
                sent = end
            if hit:
                return
        rest = cut_at_stop(self._decode(ids), stops)[0][sent:]
        if rest:
            yield rest

    def _run_stream(self, inputs: dict, stop: list[str] | None, kwargs: dict) -> Iterator[tuple[str, dict | None]]:
        """Yield (text piece, None) as tokens arrive, then ("", {"metadata", "usage"}) once at the end.

        The generator runs in a background thread (`generate(streamer=...)`) and hands each
        new token id over a queue; leaving early cancels it at the next token.
        """
        n_in = inputs["input_ids"].shape[1]
        stops, gen, cancel = self._settings(n_in, stop, kwargs)
        streamer, errors, ids = TokenQueue(), list[BaseException](), list[int]()

        def work() -> None:
            try:
                with inference(self.generator):
                    self.generator.generate(**inputs, **gen, streamer=streamer)
            except BaseException as e:  # re-raised in the consumer
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            for piece in self._text_pieces(iter(streamer.queue.get, None), stops, ids):
                yield piece, None
        finally:
            cancel.set()
            thread.join()
        if errors:
            raise errors[0]
        hit = cut_at_stop(self._decode(ids), stops)[1]
        meta = {"model_name": self.model_name, "finish_reason": self._finish(ids, hit, gen["max_new_tokens"])}
        yield "", {"metadata": meta, "usage": _usage(n_in, len(ids))}


def _usage(n_in: int, n_out: int) -> UsageMetadata:
    # the *_token_details keys are NotRequired, but langchain-core imports NotRequired from 3.11's typing, which
    # mypy's python_version = "3.10" does not know
    return UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)  # type: ignore[typeddict-item]


# ----------------------------------------------------------------------------- messages
def _role(message: BaseMessage) -> str:
    return message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type, message.type)


def to_chat_turns(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as ``[{"role", "content"}]``, consecutive turns of one role merged.

    Merging keeps strict templates (alternating user/assistant) working on histories with
    two system or two human messages in a row.
    """
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, BaseMessage):
            raise ValueError(f"messages[{i}]: expected a LangChain BaseMessage, got {type(m).__name__}")
        role, text = _role(m), m.text
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    return turns


def render_chat(tokenizer: Any, messages: Sequence[BaseMessage]) -> tuple[str, bool]:
    """Prompt text for `messages` and whether the tokenizer should still add its special tokens.

    Uses the tokenizer's chat template with a generation prompt; without one, a plain
    ``Role: text`` transcript ending in ``Assistant:``.
    """
    turns = to_chat_turns(messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True), False
    lines = [f"{t['role'].capitalize()}: {t['content']}" for t in turns]
    return "\n".join(lines + ["Assistant:"]), True


# ----------------------------------------------------------------------------- LangChain classes
class ChatContextFlow(ChatConventions, _LocalGeneration, BaseChatModel):
    """A ContextFlow generator as a LangChain chat model (the generator alone, no retrieval).

    Every setting is honoured or refused by name (see `settings.py`): unknown fields and
    per-call keywords are errors listing the accepted ones.

    Args:
        generator: HF causal LM, e.g. the fine-tuned `RAGSequence.generator`.
        tokenizer: Its tokenizer; its chat template renders the messages.
        model_name: Name for tracing and response metadata.
        temperature: 0 (default) decodes greedily; > 0 samples.
        max_tokens: Maximum new tokens per call.
        top_p: Nucleus sampling mass when sampling.
        stop: Default stop sequences (a per-call `stop` replaces them).
        streaming: Make `invoke` stream internally (callbacks see each token).
        generate_kwargs: More arguments for `generator.generate`.
        timeout: Seconds a call may generate for (HF `max_time`).
        max_retries, api_key: LangChain's standard parameters, accepted with a warning
            (nothing to retry, no key, for a local generator).

    Per-call keyword arguments (`invoke(..., max_tokens=8, temperature=0.7)`; HF's
    `max_new_tokens` is the same as `max_tokens`) override the fields; others go to
    `generator.generate` after a check of their names and values. Usage metadata (input/output tokens) is on
    every returned message.

    Example:
        >>> chat = ChatContextFlow(generator=model, tokenizer=tok, max_tokens=16)  # doctest: +SKIP
        >>> for chunk in chat.stream("Hello"):  # doctest: +SKIP
        ...     print(chunk.content, end="")
    """

    @classmethod
    def from_rag(cls, rag: Any, **kwargs: Any) -> ChatContextFlow:
        """The generator and tokenizer of a `RAGSequence` (e.g. a fine-tuned one)."""
        return cls(generator=rag.generator, tokenizer=rag.generator_tokenizer, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "contextflow-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("chat", stop, kwargs)

    def _chat_inputs(self, messages: list[BaseMessage]) -> dict[str, torch.Tensor]:
        """Prompt ids; message text is data: control-token strings in it stay text (issue 13)."""
        if not getattr(self.tokenizer, "chat_template", None):
            text, add_special = render_chat(self.tokenizer, messages)
            return self._inputs(text, add_special, literal=True)
        ids = torch.tensor([chat_ids(self.tokenizer, to_chat_turns(messages))])
        device = next(self.generator.parameters()).device
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        text, meta, usage = self._run(self._chat_inputs(messages), stop, kwargs)
        message = AIMessage(content=text, response_metadata=meta, usage_metadata=usage)
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=dict(meta))],
            llm_output={"model_name": self.model_name},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece, final in self._run_stream(self._chat_inputs(messages), stop, kwargs):
            if final is None:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            else:
                chunk = ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        response_metadata=final["metadata"],
                        usage_metadata=final["usage"],
                        chunk_position="last",
                    ),
                    generation_info=dict(final["metadata"]),
                )
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk


class ContextFlowLLM(LLMConventions, _LocalGeneration, LLM):
    """A ContextFlow generator as a LangChain text-completion LLM (raw prompt, no chat template).

    Same fields as `ChatContextFlow`; the prompt string is fed to the generator as is.

    Example:
        >>> llm = ContextFlowLLM.from_rag(rag, max_tokens=8)  # doctest: +SKIP
        >>> llm.invoke("Question: Who founded Tarsk?\\nAnswer:")  # doctest: +SKIP
    """

    @classmethod
    def from_rag(cls, rag: Any, **kwargs: Any) -> ContextFlowLLM:
        """The generator and tokenizer of a `RAGSequence`."""
        return cls(generator=rag.generator, tokenizer=rag.generator_tokenizer, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "contextflow"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("llm", stop, kwargs)

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        if self.streaming:
            return "".join(c.text for c in self._stream(prompt, stop, run_manager, **kwargs))
        return self._run(self._inputs(prompt, True), stop, kwargs)[0]

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for piece, final in self._run_stream(self._inputs(prompt, True), stop, kwargs):
            chunk = GenerationChunk(text=piece, generation_info=final["metadata"] if final else None)
            if run_manager and piece:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
