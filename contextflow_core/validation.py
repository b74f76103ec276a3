"""Argument checks shared by the configs, the core and the adapters.

Boundary: pure checks of values a user passes (numbers, keyword names, prompt
format placeholders, `generate` keyword arguments). No models, no I/O; imports
only the standard library (transformers lazily, for `generate`'s own names), so
`config.py` can use it without importing behaviour.

Every error names the argument, what was expected, what came, and the way out.
Integers are accepted as Python ints or any integer type that implements
`__index__` (numpy and torch integers) and returned as Python ints; bools and
strings are refused.

Example:
    >>> as_int("num_docs", numpy.int64(3))  # doctest: +SKIP
    3
    >>> as_int("num_docs", "3")  # doctest: +SKIP
    ValueError: num_docs: expected a positive integer, got '3' (a string; pass a number)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
import string
from collections.abc import Iterable, Mapping
from typing import Any, Literal, overload


class UnknownArgumentError(TypeError, ValueError):
    """An unknown keyword or field: a TypeError (as Python's own) and a ValueError (as pydantic's)."""


def _got(value: Any) -> str:
    hint = " (a string; pass a number)" if isinstance(value, str) else ""
    return f"got {value!r}{hint}"


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool_


def is_int(value: Any, minimum: int | None = 1) -> bool:
    """Whether `value` is an integer (Python, numpy or torch; not bool) >= `minimum`."""
    if _is_bool(value) or isinstance(value, (str, bytes)):
        return False
    try:
        number = operator.index(value)
    except TypeError:
        return False
    return minimum is None or number >= minimum


@overload
def as_int(name: str, value: Any, *, minimum: int | None = 1, none_ok: Literal[False] = False) -> int: ...
@overload
def as_int(name: str, value: Any, *, minimum: int | None = 1, none_ok: bool) -> int | None: ...
def as_int(name: str, value: Any, *, minimum: int | None = 1, none_ok: bool = False) -> int | None:
    """`value` as a Python int, or ValueError naming `name`.

    Args:
        name: Argument name for the message.
        value: The value given.
        minimum: Smallest accepted value (1: positive; 0: non-negative; None: any).
        none_ok: Accept (and return) None.
    """
    if value is None and none_ok:
        return None
    if not is_int(value, minimum):
        what = {1: "a positive integer", 0: "an integer >= 0", None: "an integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"{name}: expected {what}{' or None' if none_ok else ''}, {_got(value)}")
    return operator.index(value)


@overload
def as_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    none_ok: Literal[False] = False,
) -> float: ...
@overload
def as_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = True, none_ok: bool
) -> float | None: ...
def as_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    none_ok: bool = False,
) -> float | None:
    """`value` as a finite float in the range (low, high] (`low_open`) or [low, high], or ValueError."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(float(value))
    if ok:
        number = float(value)
        ok = (low is None or (number > low if low_open else number >= low)) and (high is None or number <= high)
    if not ok:
        bounds = [
            f"{'>' if low_open else '>='} {low:g}" if low is not None else "",
            f"<= {high:g}" if high is not None else "",
        ]
        what = "a finite number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
        raise ValueError(f"{name}: expected {what}{' or None' if none_ok else ''}, {_got(value)}")
    return float(value)


def as_bool(name: str, value: Any) -> bool:
    """`value` if it is a bool (numpy's too), else ValueError: "False" as a string is truthy."""
    if not _is_bool(value):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def refuse_unknown(
    owner: str, given: Iterable[str], accepted: Iterable[str], renames: Mapping[str, str] | None = None
) -> None:
    """Raise UnknownArgumentError for names in `given` that are not `accepted`.

    Args:
        owner: What takes the arguments, e.g. "ContextFlowRAG" or "ContextFlowRAG.invoke".
        given: Names passed.
        accepted: Names that are honoured.
        renames: Conventional names from other libraries -> the ContextFlow name to use instead.
    """
    accepted = sorted(set(accepted))
    unknown = sorted(set(given) - set(accepted))
    if not unknown:
        return
    renames = renames or {}
    for name in unknown:
        if name in renames:
            raise UnknownArgumentError(
                f"{owner}: {name!r} is not a ContextFlow setting here; use {renames[name]} instead"
            )
    raise UnknownArgumentError(f"{owner}: unknown argument(s) {unknown}; accepted: {accepted}")


def take_alias(values: dict, alias: str, name: str, owner: str) -> dict:
    """Move `values[alias]` (a conventional name, e.g. max_tokens) to `values[name]`.

    Both given with different values is refused; returns a new dict.
    """
    if alias not in values:
        return values
    values = dict(values)
    value = values.pop(alias)
    if name in values and values[name] != value:
        raise ValueError(
            f"{owner}: {alias}={value!r} and {name}={values[name]!r} name the same setting; pass only one of them"
        )
    values[name] = value
    return values


def refuse_unknown_fields(cls):
    """Class decorator for a dataclass: an unknown field is an UnknownArgumentError listing the fields."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        refuse_unknown(cls.__name__, kwargs, names)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


# ----------------------------------------------------------------------------- prompt formats
def check_placeholders(name: str, template: Any, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
    """`template` is a str.format string whose placeholders are all in `allowed` and include `required`."""
    allowed, required = tuple(allowed), tuple(required)
    shown = ", ".join("{" + a + "}" for a in allowed)
    if not isinstance(template, str):
        raise ValueError(f"{name}: expected a format string with {shown}, got {type(template).__name__}")
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(
            f"{name}: not a valid format string ({e}), got {template!r}; write literal braces as {{{{ and }}}}"
        ) from None
    for field in fields:
        if field not in allowed:
            raise ValueError(
                f"{name}: unknown placeholder {{{field}}} in {template!r}; allowed: {shown} "
                "(write literal braces as {{ and }})"
            )
    for key in ("{" + k + "}" for k in required if k not in fields):
        raise ValueError(f"{name} must contain {key}, got {template!r}")


# ----------------------------------------------------------------------------- generate kwargs
_INTS = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "num_beam_groups": 1,
    "top_k": 0,
    "max_length": 1,
    "max_new_tokens": 1,
    "min_length": 0,
    "min_new_tokens": 0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "pad_token_id": 0,
}
_NUMBERS = {
    "temperature": (0.0, None, True),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "typical_p": (0.0, 1.0, True),
    "repetition_penalty": (0.0, None, True),
    "length_penalty": (None, None, True),
    "diversity_penalty": (0.0, None, False),
    "max_time": (0.0, None, True),
}
_BOOLS = (
    "do_sample",
    "use_cache",
    "renormalize_logits",
    "remove_invalid_values",
    "output_scores",
    "return_dict_in_generate",
    "output_logits",
)
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p")
_EXTRA_GENERATE_NAMES = ("tokenizer", "assistant_tokenizer")
#: `generate` arguments RAG decoding (`RAGSequence.generate`) sets itself -> what to pass instead.
RAG_RESERVED = {
    "input_ids": "pass questions=[...]",
    "attention_mask": "pass questions=[...]",
    "max_length": "pass max_new_tokens= (the prompt length varies per passage)",
    "output_scores": "decoding always scores candidates",
    "output_logits": "decoding asks for generation's logits itself, to score the answers it generated",
    "return_dict_in_generate": "decoding needs it",
}


@functools.lru_cache(maxsize=1)
def generate_names() -> frozenset:
    """Keyword names HF `generate` honours: GenerationConfig fields and generate()'s own parameters."""
    import inspect

    from transformers import GenerationConfig, GenerationMixin

    config = {n for n in vars(GenerationConfig()) if not n.startswith("_") and n != "transformers_version"}
    params = set(inspect.signature(GenerationMixin.generate).parameters) - {"self", "inputs", "kwargs"}
    return frozenset(config | params | set(_EXTRA_GENERATE_NAMES))


def check_generate_kwargs(
    kwargs: Mapping[str, Any],
    *,
    owner: str = "generate",
    reserved: Mapping[str, str] | None = None,
    sampling: bool | None = None,
    also: Iterable[str] = (),
) -> dict:
    """Validate keyword arguments bound for HF `generate`; returns them with numbers normalised.

    Args:
        kwargs: The arguments.
        owner: Where they were passed, for messages.
        reserved: Names the caller sets itself -> the way to set them instead.
        sampling: Whether the call samples; None: `kwargs["do_sample"]` (default False).
            Sampling-only settings (temperature, top_p, top_k, ...) on a greedy call are refused.
        also: The caller's own keywords, listed with the accepted names when one is unknown.

    Raises:
        UnknownArgumentError: A name `generate` does not know, or a reserved one.
        ValueError: A number of the wrong type or range.
    """
    reserved = reserved or {}
    for name in kwargs:
        if name in reserved:
            raise UnknownArgumentError(f"{owner}: {name!r} is set by ContextFlow; {reserved[name]}")
    unknown = sorted(set(kwargs) - generate_names())
    if unknown:
        own = f"{sorted(set(also))} or " if also else ""
        raise UnknownArgumentError(
            f"{owner}: unknown argument(s) {unknown}; accepted: {own}a transformers GenerationConfig field or "
            "generate() argument (e.g. num_beams, do_sample, temperature, top_p, top_k, repetition_penalty)"
        )
    out = dict(kwargs)
    for name, value in kwargs.items():
        if value is None:
            continue
        if name in _INTS:
            out[name] = as_int(name, value, minimum=_INTS[name])
        elif name in _NUMBERS:
            low, high, low_open = _NUMBERS[name]
            out[name] = as_number(name, value, low=low, high=high, low_open=low_open)
        elif name in _BOOLS:
            out[name] = as_bool(name, value)
    samples = bool(out.get("do_sample", False)) if sampling is None else sampling
    given = [n for n in SAMPLING_ONLY if out.get(n) is not None]
    if given and not samples:
        raise ValueError(
            f"{owner}: {given} only apply when sampling, but this call decodes greedily; "
            "pass do_sample=True (or a temperature > 0 where the component takes one), or drop them"
        )
    return out
