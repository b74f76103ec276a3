"""Loaders for any Hugging Face generator or encoder, by hub id or local path.

Boundary: this module turns a name or folder into ready-to-use objects, a
`(model, tokenizer)` pair for generators and a `TextEncoder` for retrievers. It
knows nothing of indexes, prompts or training; it never pickles (weights come
from safetensors or whatever the checkpoint ships, and `trust_remote_code` is off
unless the caller turns it on). Local paths load with `HF_HUB_OFFLINE=1`.

Encoder kinds (`load_encoder(kind=...)`):
    - "sentence_transformers": a sentence-transformers folder (`modules.json`);
      pooling and normalisation come from its Pooling/Normalize modules.
    - "dpr_question" / "dpr_context": a DPR encoder, pooled by its `pooler_output`.
    - "hf": any `AutoModel` body, mean-pooled unless told otherwise.
    - "auto": the first of those three whose files or config match.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from packaging import version
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    DPRContextEncoder,
    DPRQuestionEncoder,
)

from contextflow_core.models.encoders import TextEncoder

# transformers renamed `torch_dtype` to `dtype` in 4.56.
_DTYPE_KWARG = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"
ENCODER_KINDS = ("auto", "hf", "dpr_question", "dpr_context", "sentence_transformers")
DEFAULT_MAX_LENGTH = 256

# kind -> (model class, default pooling); "sentence_transformers" reads its pooling from disk.
_ENCODER_CLASSES: dict[str, tuple[Any, str]] = {
    "hf": (AutoModel, "mean"),
    "sentence_transformers": (AutoModel, "mean"),
    "dpr_question": (DPRQuestionEncoder, "pooler"),
    "dpr_context": (DPRContextEncoder, "pooler"),
}
_DPR_ARCHITECTURES = {"DPRQuestionEncoder": "dpr_question", "DPRContextEncoder": "dpr_context"}
_ST_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


# ---------------------------------------------------------------- generators


def ensure_pad_token(tokenizer, model=None, *, pad_token: str | None = None):
    """Give `tokenizer` a pad token without growing the vocabulary.

    Uses `pad_token` when given (it must already be in the vocabulary), else the
    EOS token. Padding is masked out of attention and labels, so reusing EOS is
    safe. When `model` is given, its `generation_config.pad_token_id` is set too.

    Args:
        tokenizer: A HF tokenizer; modified in place.
        model: Optional causal LM whose generation config should know the pad id.
        pad_token: An existing token to pad with, for tokenizers with no EOS.

    Returns:
        The same tokenizer.

    Raises:
        ValueError: If the tokenizer has neither a pad nor an EOS token and no
            usable `pad_token` was given.
    """
    if tokenizer.pad_token is None:
        if pad_token is not None:
            if pad_token not in tokenizer.get_vocab():
                raise ValueError(
                    f"pad_token {pad_token!r} is not in the vocabulary of tokenizer "
                    f"{_tokenizer_name(tokenizer)!r}; pass a token it already has"
                )
            tokenizer.pad_token = pad_token
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ValueError(
                f"tokenizer {_tokenizer_name(tokenizer)!r} has neither a pad token nor an EOS token; "
                "pass pad_token=<a token in its vocabulary> (e.g. load_generator(..., pad_token='<unk>'))"
            )
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _on_cpu(device_map) -> bool:
    if device_map is None:
        return not torch.cuda.is_available()
    if isinstance(device_map, dict):
        return all(str(place) == "cpu" for place in device_map.values())
    return str(device_map) == "cpu"


def _bnb_4bit(dtype, device_map) -> dict[str, Any]:
    compute = torch.float32 if _on_cpu(device_map) else (dtype or torch.bfloat16)
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": compute,
    }


def _bnb_8bit(dtype, device_map) -> dict[str, Any]:
    return {"load_in_8bit": True}


_QUANTIZATIONS = {"4bit": _bnb_4bit, "8bit": _bnb_8bit}


def quantization_config(quantization: str | None, *, dtype=None, device_map=None):
    """The `BitsAndBytesConfig` for "4bit" / "8bit", or None for no quantization.

    4-bit uses NF4 with double quantization; it computes in float32 on CPU and
    in `dtype` (default bfloat16) on GPU.

    Raises:
        ValueError: On an unknown `quantization`.
    """
    if quantization is None:
        return None
    if quantization not in _QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {sorted(_QUANTIZATIONS)} or None, got {quantization!r}")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**_QUANTIZATIONS[quantization](dtype, device_map))


def _gguf_dequantize_config():
    """Ask transformers to unpack GGUF weights into a plain, trainable, savable model."""
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF
        return None
    return GgufConfig(dequantize=True)


def load_generator(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | None = None,
    device_map=None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
    pad_token: str | None = None,
    **kwargs,
):
    """Load a decoder-only LLM and its tokenizer, ready for RAG training and generation.

    Args:
        name_or_path: Hub id or local folder.
        gguf_file: A `.gguf` file in that folder (or repo) to load instead of
            safetensors; its weights are dequantized into a plain trainable model.
        dtype: Parameter dtype (None: the checkpoint's).
        device_map: Passed to `from_pretrained` (e.g. "auto", "cpu", {"": 0}).
        quantization: "4bit", "8bit" (bitsandbytes) or None.
        trust_remote_code: Run code shipped with the checkpoint. Off by default.
        pad_token: Token to pad with when the tokenizer has none and no EOS.
        **kwargs: More `AutoModelForCausalLM.from_pretrained` arguments.

    Returns:
        `(model, tokenizer)`; the tokenizer has a pad token and the model's
        generation config knows its id.

    Example:
        >>> model, tok = load_generator("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    """
    model_kwargs = dict(kwargs, trust_remote_code=trust_remote_code)
    if dtype is not None:
        model_kwargs[_DTYPE_KWARG] = dtype
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    quant = quantization_config(quantization, dtype=dtype, device_map=device_map)
    if gguf_file is not None:
        model_kwargs["gguf_file"] = gguf_file
        quant = quant or _gguf_dequantize_config()
    if quant is not None:
        model_kwargs["quantization_config"] = quant
    tok_kwargs = {"gguf_file": gguf_file} if gguf_file is not None else {}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **tok_kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **model_kwargs)
    ensure_pad_token(tokenizer, model, pad_token=pad_token)
    return model, tokenizer


# ---------------------------------------------------------------- encoders


@dataclass
class _EncoderPlan:
    """What `load_encoder` decided to build, before loading any weights."""

    kind: str
    subfolder: str = ""
    pooling: str | None = None
    normalize: bool = False
    max_length: int | None = None


def _join(subfolder: str, filename: str) -> str:
    """A repo-relative path (always "/"-separated, valid for hub repos and folders)."""
    return f"{subfolder.strip('/')}/{filename}" if subfolder.strip("/") else filename


def _read_json(name_or_path: str, filename: str) -> Any:
    """A JSON file of a local folder or hub repo, or None when it is absent."""
    path: str | None
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        if not os.path.isfile(path):
            return None
    else:
        from transformers.utils import cached_file

        try:
            path = cached_file(
                name_or_path,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError:
            return None
        if path is None:
            return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _st_pooling(pool_cfg: dict, where: str) -> str:
    """The pooling ("mean" or "cls") of a sentence-transformers Pooling config, old or new format."""
    mode = pool_cfg.get("pooling_mode")  # new format: a mode or a list of modes
    if mode is None:  # old format: one boolean per mode, mean when none is set
        mode = [name for key, name in _ST_LEGACY_POOLING.items() if pool_cfg.get(key)] or ["mean"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in ("mean", "cls"):
        raise ValueError(
            f"{where}: sentence-transformers pooling {modes} is not supported; only a single "
            "'mean' or 'cls' pooling is (pass kind='hf' and pooling=... to override)"
        )
    return modes[0]


def _st_plan(name_or_path: str, modules: list[dict]) -> _EncoderPlan:
    """Read a sentence-transformers folder: transformer subfolder, pooling, normalisation."""
    by_type = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    unknown = set(by_type) - {"Transformer", "Pooling", "Normalize"}
    if unknown or "Transformer" not in by_type:
        raise ValueError(
            f"{name_or_path}: sentence-transformers modules {sorted(by_type)} are not supported; "
            "a Transformer, an optional Pooling and an optional Normalize module are"
        )
    subfolder = by_type["Transformer"].get("path", "")
    pooling = None
    if "Pooling" in by_type:
        pool_cfg = _read_json(name_or_path, _join(by_type["Pooling"].get("path", ""), "config.json")) or {}
        pooling = _st_pooling(pool_cfg, name_or_path)
    st_cfg = _read_json(name_or_path, _join(subfolder, "sentence_bert_config.json")) or {}
    return _EncoderPlan(
        "sentence_transformers", subfolder, pooling, "Normalize" in by_type, st_cfg.get("max_seq_length")
    )


def _dpr_kind(config) -> str | None:
    if getattr(config, "model_type", None) != "dpr":
        return None
    for arch in config.architectures or []:
        if arch in _DPR_ARCHITECTURES:
            return _DPR_ARCHITECTURES[arch]
    raise ValueError(
        f"DPR checkpoint with architectures {config.architectures} is neither a question nor a "
        "context encoder; pass kind='dpr_question' or kind='dpr_context'"
    )


def _plan_encoder(name_or_path: str, kind: str, trust_remote_code: bool) -> tuple[_EncoderPlan, Any]:
    """Decide the encoder kind, subfolder and pooling defaults; returns the plan and config."""
    if kind not in ENCODER_KINDS:
        raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {kind!r}")
    modules = _read_json(name_or_path, "modules.json") if kind in ("auto", "sentence_transformers") else None
    if kind == "sentence_transformers" and modules is None:
        raise ValueError(f"{name_or_path} has no modules.json, so it is not a sentence-transformers model")
    plan = _st_plan(name_or_path, modules) if modules is not None else _EncoderPlan(kind)
    config = AutoConfig.from_pretrained(name_or_path, subfolder=plan.subfolder, trust_remote_code=trust_remote_code)
    if plan.kind == "auto":
        plan.kind = _dpr_kind(config) or "hf"
    return plan, config


def load_encoder(
    name_or_path: str,
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    kind: str = "auto",
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> TextEncoder:
    """Load a text encoder (question or context side of the retriever).

    Args:
        name_or_path: Hub id or local folder: a sentence-transformers model, a DPR
            encoder or any HF encoder body.
        pooling: "mean", "cls" or "pooler"; None takes the kind's default
            (sentence-transformers: its Pooling module; DPR: "pooler"; else "mean").
        normalize: L2-normalise embeddings; None: True only for a
            sentence-transformers model with a Normalize module.
        kind: "auto", "hf", "dpr_question", "dpr_context" or "sentence_transformers".
        max_length: Truncation length; None: the sentence-transformers
            `max_seq_length` when there is one, else 256.
        trust_remote_code: Run code shipped with the checkpoint. Off by default.

    Returns:
        A `TextEncoder` named `name_or_path`.

    Example:
        >>> enc = load_encoder("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> enc.pooling, enc.normalize  # doctest: +SKIP
        ('mean', True)
    """
    plan, config = _plan_encoder(name_or_path, kind, trust_remote_code)
    model_cls, default_pooling = _ENCODER_CLASSES[plan.kind]
    sub = {"subfolder": plan.subfolder} if plan.subfolder else {}
    model = model_cls.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code, **sub)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **sub)
    return TextEncoder(
        model.eval(),
        tokenizer,
        pooling=pooling or plan.pooling or default_pooling,
        normalize=plan.normalize if normalize is None else normalize,
        max_length=max_length or plan.max_length or DEFAULT_MAX_LENGTH,
        name=str(name_or_path),
    )
