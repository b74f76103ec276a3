"""The reader adapter: merged by `default_generator` / `from_defaults`, recorded when saved, rebuilt when loaded.

Most tests put a stand-in reader in place of the shipped one (`reader_dir` monkeypatched): a random
LoRA saved by peft on the real embedded SmolLM2, so the merge, the checks and the save records are
tested independently of the shipped weights. The quick-start tests at the end use the shipped reader.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from contextflow_core import RAGSequence
from contextflow_core.config import TrainConfig
from contextflow_core.cli import main
from contextflow_core.io_utils import sha256_file
from contextflow_core.models import default_generator
from contextflow_core.models import reader as reader_mod
from contextflow_core.models.base_pin import weights_sha256
from contextflow_core.models.peft_utils import add_lora
from contextflow_core.serialization import _write_manifest
from contextflow_core.training import make_dataloader, train_rag

PASSAGES = ["Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk.",
            "Quenia exports blue salt.", "Tarsk was founded in 1204."]
README_PASSAGES = ["Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk."]
QA = [("What is the capital of Quenia?", "Zorblat"), ("Which river flows through Tarsk?", "Mivo")]
FILES = (reader_mod.ADAPTER_FILE, reader_mod.ADAPTER_CONFIG)


def write_record(folder: Path) -> dict:
    """reader.json listing the sha256 of the adapter's two files, as the shipped one does."""
    record = {"files": {name: sha256_file(folder / name) for name in FILES}}
    (folder / reader_mod.RECORD).write_text(json.dumps(record), encoding="utf-8")
    return record


@pytest.fixture(scope="session")
def raw_sha() -> dict:
    """{"sha": weights_sha256 of the raw embedded SmolLM2}, filled by `stand_in`."""
    return {}


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory, raw_sha) -> Path:
    """A peft LoRA (q_proj, v_proj, r=4, alpha=8) on the embedded SmolLM2 with random non-zero B."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("reader")
    model, _ = default_generator(reader=False)
    raw_sha["sha"] = weights_sha256(model)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lora.save_pretrained(folder)
    write_record(folder)
    return folder


@pytest.fixture
def install(monkeypatch):
    """install(folder): make `folder` the installed reader."""
    def put(folder: Path) -> None:
        monkeypatch.setattr(reader_mod, "reader_dir", lambda: Path(folder))
    return put


def identity_of(folder: Path) -> dict:
    return {"name": reader_mod.READER_NAME, "sha256": sha256_file(folder / reader_mod.ADAPTER_FILE),
            "config_sha256": sha256_file(folder / reader_mod.ADAPTER_CONFIG)}


def fake_reader(folder: Path) -> Path:
    """Reader files with a valid record (for the checks that run before any model is loaded)."""
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 3)},
              str(folder / reader_mod.ADAPTER_FILE))
    (folder / reader_mod.ADAPTER_CONFIG).write_text(json.dumps({"r": 2, "lora_alpha": 4, "peft_type": "LORA"}))
    write_record(folder)
    return folder


def scores(rag) -> tuple[torch.Tensor, torch.Tensor]:
    out = rag(questions=[q for q, _ in QA], answers=[a for _, a in QA])
    return out.doc_logprobs.detach(), out.seq_logprobs.detach()


# ---------------------------------------------------------------- refusals (no model loaded)


def test_missing_reader_fails_instead_of_giving_the_raw_model(tmp_path, install):
    install(tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match=r"reader adapter is not installed.*reader=False"):
        default_generator()
    with pytest.raises(FileNotFoundError, match="reader adapter is not installed"):
        RAGSequence.from_defaults(PASSAGES)


@pytest.mark.parametrize("victim", FILES)
def test_tampered_reader_is_refused(tmp_path, install, victim):
    folder = fake_reader(tmp_path / "reader")
    install(folder)
    with open(folder / victim, "ab") as f:
        f.write(b" ")
    with pytest.raises(ValueError, match=rf"{victim}: sha256 .* recorded in reader.json: the reader adapter was "
                                         "modified or corrupted"):
        default_generator()


def test_record_that_does_not_list_the_adapter_is_refused(tmp_path, install):
    folder = fake_reader(tmp_path / "reader")
    (folder / reader_mod.RECORD).write_text(json.dumps({"files": {}}))
    install(folder)
    with pytest.raises(ValueError, match=r"'files' does not list \['adapter_model.safetensors'"):
        default_generator()


@pytest.mark.parametrize("argv, fragment", [
    (["ask", "--generator", "some/model", "--reader", "q"], "--reader: the reader adapter fits --generator embedded"),
    (["ask", "--model", "runs/m", "--no-reader", "q"], "--no-reader: --model runs/m keeps the generator"),
])
def test_cli_refuses_a_reader_flag_that_means_nothing(capsys, argv, fragment):
    assert main(argv) == 1
    assert fragment in capsys.readouterr().err


# ---------------------------------------------------------------- merging


@pytest.mark.embedded
def test_default_generator_adds_exactly_the_reader_delta(stand_in, install):
    install(stand_in)
    raw, _ = default_generator(reader=False)
    merged, _ = default_generator()
    scale = 8 / 4
    adapters = load_file(str(stand_in / reader_mod.ADAPTER_FILE))
    deltas = {k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"):
              scale * adapters[k.replace("lora_A", "lora_B")] @ adapters[k] for k in adapters if "lora_A" in k}
    assert len(deltas) == 2 * raw.config.num_hidden_layers
    raw_params = dict(raw.named_parameters())
    for name, p in merged.named_parameters():
        if name in deltas:
            torch.testing.assert_close(p - raw_params[name], deltas[name], rtol=0, atol=1e-6)
            assert deltas[name].abs().max() > 1e-3
        else:
            assert torch.equal(p, raw_params[name]), name
    assert reader_mod.reader_of(merged) == identity_of(stand_in) and reader_mod.reader_of(raw) is None
    again, _ = default_generator()
    assert weights_sha256(again) == weights_sha256(merged)  # the pin of a LoRA on top is reproducible


# ---------------------------------------------------------------- from_defaults, saving and loading


@pytest.mark.embedded
def test_from_defaults_records_the_reader_and_a_full_save_keeps_the_record(stand_in, raw_sha, install, tmp_path):
    install(stand_in)
    raw = RAGSequence.from_defaults(PASSAGES, reader=False)
    assert reader_mod.reader_of(raw.generator) is None and weights_sha256(raw.generator) == raw_sha["sha"]
    del raw
    rag = RAGSequence.from_defaults(PASSAGES, num_docs=2)
    assert reader_mod.reader_of(rag.generator) == identity_of(stand_in)
    rag.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "rag_config.json").read_text())["generator"]
    assert saved == {"kind": "full", "reader": identity_of(stand_in)}
    loaded = RAGSequence.from_pretrained(tmp_path / "m")
    assert reader_mod.reader_of(loaded.generator) == identity_of(stand_in)
    for want, got in zip(scores(rag), scores(loaded)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.embedded
def test_lora_on_the_reader_trains_alone_saves_and_loads(stand_in, install, tmp_path):
    install(stand_in)
    rag = RAGSequence.from_defaults(PASSAGES, num_docs=2)
    merged = {n: p.detach().clone() for n, p in rag.generator.named_parameters()}
    config = TrainConfig(generator_lora=True, lora_r=2, max_steps=2, num_epochs=1, learning_rate=1e-2,
                         progress=False, plot=False, resume=False, save_on_epoch_end=False, seed=0)
    train_rag(rag, make_dataloader(QA, batch_size=2, seed=0), config=config)
    base = rag.generator.get_base_model()
    for name, p in base.named_parameters():
        key = name.replace(".base_layer", "")
        if "lora_" in name:
            assert p.requires_grad and ("lora_B" not in name or p.abs().max() > 0), name
        else:
            assert not p.requires_grad and torch.equal(p, merged[key]), name  # the merged reader stays frozen
    rag.eval().save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "rag_config.json").read_text())["generator"]
    assert saved["base"] == "embedded" and saved["reader"] == identity_of(stand_in)
    loaded = RAGSequence.from_pretrained(tmp_path / "m")
    assert reader_mod.reader_of(loaded.generator) == identity_of(stand_in)
    for want, got in zip(scores(rag), scores(loaded)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = tmp_path / "other-reader"
    shutil.copytree(stand_in, other)
    (other / reader_mod.ADAPTER_CONFIG).write_text(
        (stand_in / reader_mod.ADAPTER_CONFIG).read_text().replace('"lora_alpha": 8', '"lora_alpha": 4'))
    write_record(other)
    install(other)  # an upgrade shipping another reader: the adapters would sit on a different base
    with pytest.raises(ValueError, match="trained on top of the reader adapter with sha256 .* but the installed"):
        RAGSequence.from_pretrained(tmp_path / "m")


@pytest.mark.embedded
def test_old_save_without_a_reader_field_loads_the_raw_base(stand_in, install, tmp_path):
    install(stand_in)  # a reader is installed, yet the old save must not get it
    rag = add_lora(RAGSequence.from_defaults(PASSAGES, num_docs=2, reader=False), r=2)
    with torch.no_grad():
        for name, p in rag.generator.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    rag.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "rag_config.json"
    config = json.loads(config_path.read_text())
    assert config["generator"]["reader"] is None
    del config["generator"]["reader"]  # as saved before the reader existed
    config_path.write_text(json.dumps(config))
    (tmp_path / "m" / "manifest.json").unlink()
    _write_manifest(tmp_path / "m")
    loaded = RAGSequence.from_pretrained(tmp_path / "m")
    assert reader_mod.reader_of(loaded.generator) is None
    for want, got in zip(scores(rag), scores(loaded)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.embedded
def test_cli_embedded_generator_uses_the_reader_unless_no_reader(tmp_path, install, capsys):
    install(tmp_path / "not-installed")
    passages = tmp_path / "p.jsonl"
    passages.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PASSAGES)))
    ask = ["ask", "--passages", str(passages), "--num-docs", "1", "--decoding", "fast", "--max-new-tokens", "4",
           "What is the capital of Quenia?"]
    assert main(ask) == 1
    assert "reader adapter is not installed" in capsys.readouterr().err
    assert main(ask + ["--no-reader"]) == 0
    assert "p0:" in capsys.readouterr().out


# ---------------------------------------------------------------- the README quick start, shipped reader


@pytest.fixture(scope="module")
def quick_start() -> dict:
    """The README quick start's model with the shipped reader (True) and without it (False)."""
    return {reader: RAGSequence.from_defaults(README_PASSAGES, reader=reader) for reader in (True, False)}


@pytest.mark.embedded
@pytest.mark.parametrize("decoding", [
    "thorough", "fast",
    # A known miss of the shipped reader (32 steps): with both passages in one prompt it answers 'Tarsk'.
    # Strict, so a reader that fixes it makes this fail until the mark is removed (benchmarks/RESULTS.md).
    pytest.param("concat", marks=pytest.mark.xfail(strict=True, reason="shipped reader answers 'Tarsk' in concat")),
])
def test_quick_start_answers_with_the_span_from_the_gold_passage(quick_start, decoding):
    def ask(rag):
        return rag.generate(questions=["What is the capital of Quenia?"], max_new_tokens=16, num_docs=2,
                            decoding=decoding)[0]

    answer = ask(quick_start[True])
    assert answer.text == "Zorblat"
    assert answer.sources[0][0].text == README_PASSAGES[0] and answer.sources[0][1] > 0.5
    raw = ask(quick_start[False])  # the defect: 'The answer to the question is: Quenia.'
    assert "Zorblat" not in raw.text
