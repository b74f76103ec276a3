"""Settings of `ChatContextFlow` / `ContextFlowLLM`: honoured, or refused by name.

Boundary: checks and resolves constructor fields and per-call keywords into the
arguments of one HF `generate` call. No models, no messages.

LangChain's standard chat-model parameters are honoured where a local generator
can: `temperature`, `max_tokens` (HF's `max_new_tokens` is accepted as the same
setting), `top_p`, `stop`, `timeout` (HF's `max_time`). `max_retries` and
`api_key` have nothing to act on in a local generator: they are accepted (the
standard suites pass them) with a warning, never silently.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from contextflow_core.validation import as_int, as_number, check_generate_kwargs, refuse_unknown, take_alias

if TYPE_CHECKING:
    from pydantic import BaseModel

#: generate() arguments the adapter sets itself -> the field or keyword to use instead.
RESERVED = {
    "input_ids": "pass the prompt or messages",
    "attention_mask": "pass the prompt or messages",
    "max_new_tokens": "pass max_tokens=",
    "max_length": "pass max_tokens= (new tokens)",
    "do_sample": "set temperature > 0 to sample, 0 to decode greedily",
    "temperature": "pass temperature=",
    "top_p": "pass top_p=",
    "stopping_criteria": "pass stop=[...] (stop sequences)",
    "streamer": "use .stream()",
    "max_time": "pass timeout= (seconds)",
}
_CALL_NAMES = ("max_tokens", "max_new_tokens", "temperature", "top_p", "timeout", "stop", "model")
_UNUSED = {
    "max_retries": "a local generator makes no network calls, so there is nothing to retry",
    "api_key": "a local generator needs no key",
}


def check_fields(cls: type[BaseModel], data: Any) -> Any:
    """Constructor check (a pydantic before-validator body): unknown fields, aliases and types."""
    if not isinstance(data, dict):
        return data
    data = take_alias(data, "max_new_tokens", "max_tokens", cls.__name__)
    refuse_unknown(cls.__name__, data, cls.model_fields, {"max_length": "max_tokens"})
    for name, reason in _UNUSED.items():
        if data.get(name) is not None:
            warnings.warn(f"{name}: ignored by {cls.__name__}: {reason}", UserWarning, stacklevel=4)
    checks = {
        "max_tokens": lambda v: as_int("max_tokens", v),
        "temperature": lambda v: as_number("temperature", v, low=0.0, low_open=False),
        "top_p": lambda v: as_number("top_p", v, low=0.0, high=1.0, none_ok=True),
        "timeout": lambda v: as_number("timeout", v, low=0.0, none_ok=True),
        "max_retries": lambda v: as_int("max_retries", v, minimum=0, none_ok=True),
    }
    data = {**data, **{name: check(data[name]) for name, check in checks.items() if name in data}}
    if "generate_kwargs" in data and isinstance(data["generate_kwargs"], dict):
        data["generate_kwargs"] = check_generate_kwargs(
            data["generate_kwargs"], owner="generate_kwargs", reserved=RESERVED, sampling=True
        )
    _check_sampling(data.get("temperature", 0.0), data.get("top_p"), data.get("generate_kwargs") or {})
    return data


def _check_sampling(temperature: float, top_p: float | None, extra: dict) -> None:
    """Sampling settings on a greedy (temperature 0) call would be ignored: refuse them."""
    if temperature > 0:
        return
    given = (["top_p"] if top_p is not None else []) + [
        n for n in ("top_k", "min_p", "typical_p") if extra.get(n) is not None
    ]
    if given:
        raise ValueError(
            f"{given}: apply only when sampling, but temperature=0 decodes greedily; set temperature > 0 or drop them"
        )


def call_settings(owner: str, fields: Any, kwargs: dict) -> tuple[int, float, float | None, float | None, dict]:
    """Per-call keywords over the fields: (max_tokens, temperature, top_p, timeout, other generate kwargs)."""
    kwargs = take_alias(dict(kwargs), "max_new_tokens", "max_tokens", owner)
    max_tokens = as_int("max_tokens", kwargs.pop("max_tokens", fields.max_tokens))
    temperature = as_number("temperature", kwargs.pop("temperature", fields.temperature), low=0.0, low_open=False)
    top_p = as_number("top_p", kwargs.pop("top_p", fields.top_p), low=0.0, high=1.0, none_ok=True)
    timeout = as_number("timeout", kwargs.pop("timeout", fields.timeout), low=0.0, none_ok=True)
    extra = check_generate_kwargs(
        {**fields.generate_kwargs, **kwargs}, owner=owner, reserved=RESERVED, sampling=True, also=_CALL_NAMES
    )
    _check_sampling(temperature, top_p, extra)
    return max_tokens, temperature, top_p, timeout, extra
