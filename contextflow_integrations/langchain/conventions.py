"""LangChain conventions of `ChatContextFlow` / `ContextFlowLLM`: token counting, tools refused by name.

Boundary: counts tokens with the generator's own tokenizer (never LangChain's GPT-2
fallback), so ``trim_messages(..., token_counter=chat_model)``, memory classes and
text splitters measure what the generator really reads; refuses tool calling and
structured output, which a local generator without a tool-call format cannot honour,
saying what to use instead. No decoding here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, get_buffer_string

__all__ = ["ChatConventions", "LLMConventions", "NO_STRUCTURED_OUTPUT", "NO_TOOLS"]

NO_TOOLS = (
    "bind_tools: ChatContextFlow runs a local generator that has no tool-call format; "
    "give the tools to a tool-calling chat model and hand it ContextFlow as a tool "
    "(ContextFlowRAG(model=...).as_tool()), or route with a RunnableBranch"
)
NO_STRUCTURED_OUTPUT = (
    "with_structured_output: ChatContextFlow runs a local generator that has no tool-call or "
    "JSON mode; pipe its text into an output parser (chat | PydanticOutputParser(...) or "
    "JsonOutputParser()) or use a chat model with structured output"
)


def _text(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    return text


class _TokenCounting:
    """`get_token_ids` / `get_num_tokens` with the generator's tokenizer (`self.tokenizer`)."""

    if TYPE_CHECKING:  # a field of the models this mixes into; not declared at run time (pydantic)
        tokenizer: Any

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` under the generator's tokenizer (see the class for special tokens)."""
        raise NotImplementedError  # pragma: no cover - defined by the two classes below

    def get_num_tokens(self, text: str) -> int:
        """Number of generator tokens in `text` (``len(get_token_ids(text))``)."""
        return len(self.get_token_ids(text))


class ChatConventions(_TokenCounting):
    """Token counting and refusals of `ChatContextFlow`.

    - `get_token_ids(text)`: the ids of `text` as message content (no special tokens added;
      control-token strings in it stay text, as in a message).
    - `get_num_tokens_from_messages(messages)`: the length of the prompt the generator
      reads for `messages`: the chat template with its generation prompt (or the plain
      transcript), so ``trim_messages(..., token_counter=chat)`` keeps what fits. Each
      count is a whole prompt, so a template that adds a default system turn to a list
      without one (SmolLM2's) makes ``include_system=True`` trimming conservative: the
      kept messages fit, with that turn's tokens to spare.
    - `bind_tools` / `with_structured_output`: NotImplementedError naming what to use instead.
    """

    def get_token_ids(self, text: str) -> list[int]:
        """Ids of `text` as message content under the generator's tokenizer (no special tokens added)."""
        return list(self.tokenizer(_text(text), add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Prompt length in generator tokens for `messages` (0 for no messages); `tools` are refused."""
        if tools:
            raise NotImplementedError(NO_TOOLS.replace("bind_tools", "tools", 1))
        if not messages:
            return 0
        return int(self._chat_inputs(list(messages))["input_ids"].shape[1])  # type: ignore[attr-defined]

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Refused: a local generator has no tool-call format (the message says what to use)."""
        raise NotImplementedError(NO_TOOLS)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Any:
        """Refused: a local generator has no structured-output mode (the message says what to use)."""
        raise NotImplementedError(NO_STRUCTURED_OUTPUT)


class LLMConventions(_TokenCounting):
    """Token counting of `ContextFlowLLM`.

    - `get_token_ids(text)`: the ids the generator is fed for the prompt `text` (the
      tokenizer's special tokens, e.g. BOS, included), so ``get_num_tokens(prompt)`` is the
      prompt length of ``invoke(prompt)``.
    - `get_num_tokens_from_messages(messages)`: the same for the transcript LangChain
      builds from messages for an LLM (``get_buffer_string``).
    """

    def get_token_ids(self, text: str) -> list[int]:
        """Ids the generator is fed for the prompt `text` (special tokens included)."""
        return list(self.tokenizer(_text(text), add_special_tokens=True)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Prompt length in generator tokens of the transcript of `messages`; `tools` are refused."""
        if tools:
            raise NotImplementedError(
                "tools: ContextFlowLLM is a text-completion model with no tool calling; "
                "give the tools to a tool-calling chat model"
            )
        return self.get_num_tokens(get_buffer_string(list(messages))) if messages else 0
