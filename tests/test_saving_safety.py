"""Saving never deletes what it did not write; loading reads only the saved files; LoRA bases are pinned.

Issue 13 items 1, 4 and 5, through the public API: `DocumentIndex.save/load`,
`RAGSequence.save_pretrained/from_pretrained`, `train_rag`, and the CLI.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import tiny
from train_tiny import PASSAGES, QA, build_rag, loaders, tiny_config, tiny_encoder

from contextflow_core import cli
from contextflow_core.io_utils import sha256_file
from contextflow_core.models import load_generator
from contextflow_core.models.peft_utils import add_lora
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.training import train_rag

QS, ANS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"], ["Zorblat", "Mivo"]
NOTES = "my notes, not a model\n"


@pytest.fixture
def rag():
    return build_rag()


@pytest.fixture
def user_dir(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text(NOTES)
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and ("tmp-" in p.name or "old-" in p.name))


def _loss(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(questions=QS, answers=ANS).loss


def _assert_refused_intact(excinfo, folder: Path) -> None:
    message = str(excinfo.value)
    assert str(folder.resolve()) in message and "new or empty folder" in message, message
    assert sorted(os.listdir(folder)) == ["notes.txt"] and (folder / "notes.txt").read_text() == NOTES
    assert _leftovers(folder.parent) == []


# ----------------------------------------------------------------------------- item 1: refusals
def test_index_save_refuses_a_user_folder(rag, user_dir):
    with pytest.raises(FileExistsError) as excinfo:
        rag.index.save(user_dir)
    _assert_refused_intact(excinfo, user_dir)


def test_save_pretrained_refuses_a_user_folder(rag, user_dir):
    with pytest.raises(FileExistsError) as excinfo:
        rag.save_pretrained(user_dir)
    _assert_refused_intact(excinfo, user_dir)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    encoder = tiny_encoder()
    encoder.model.save_pretrained(root / "enc")
    encoder.tokenizer.save_pretrained(root / "enc")
    tiny.tiny_generator().save_pretrained(root / "gen")
    tiny.tiny_tokenizer().save_pretrained(root / "gen")
    (root / "passages.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(PASSAGES)))
    (root / "train.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _ in QA))
    return root


def test_cli_index_build_out_dot_refuses_the_project_folder(cli_files, user_dir, monkeypatch, capsys):
    monkeypatch.chdir(user_dir)
    code = cli.main(["index", "build", "--passages", str(cli_files / "passages.jsonl"), "--out", ".",
                     "--encoder", str(cli_files / "enc")])
    err = capsys.readouterr().err
    assert code == 1 and str(user_dir.resolve()) in err and "new or empty folder" in err, err
    assert sorted(os.listdir(user_dir)) == ["notes.txt"] and (user_dir / "notes.txt").read_text() == NOTES
    assert cli.main(["index", "build", "--passages", str(cli_files / "passages.jsonl"), "--out", "index",
                     "--encoder", str(cli_files / "enc")]) == 0
    assert len(DocumentIndex.load(user_dir / "index")) == len(PASSAGES)


def _cli_train(cli_files, out: Path, *extra) -> int:
    return cli.main(["train", "--index", str(out.parent / "idx"), "--encoder", str(cli_files / "enc"),
                     "--generator", str(cli_files / "gen"), "--train", str(cli_files / "train.jsonl"),
                     "--batch-size", "4", "--max-steps", "1", "--num-docs", "2", "--output-dir", str(out),
                     "--no-progress", "--no-plot", *extra])


def test_cli_train_refuses_save_model_before_training(cli_files, user_dir, tmp_path, capsys):
    build_rag().index.save(tmp_path / "idx")
    run = tmp_path / "run"
    assert _cli_train(cli_files, run, "--save-model", str(user_dir)) == 1
    err = capsys.readouterr().err
    assert str(user_dir.resolve()) in err and "new or empty folder" in err, err
    assert sorted(os.listdir(user_dir)) == ["notes.txt"] and not run.exists()  # refused before any training
    assert _cli_train(cli_files, run, "--save-model", str(run)) == 1
    assert "--save-model" in capsys.readouterr().err and not run.exists()


def test_save_pretrained_into_a_training_output_dir_keeps_its_checkpoints(rag, tmp_path):
    out = tmp_path / "run"
    train_rag(rag, loaders()[0], config=tiny_config(out, num_epochs=1, max_steps=2, save_steps=1))
    before = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    assert any(name.startswith("checkpoint-") for name in before) and "metrics.jsonl" in before
    with pytest.raises(FileExistsError, match="files ContextFlow did not write"):
        rag.save_pretrained(out)
    assert {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()} == before
    assert _leftovers(tmp_path) == []


def test_different_kind_manifest_plus_unknown_file_and_plain_file_are_refused(rag, tmp_path):
    rag.save_pretrained(tmp_path / "model")
    with pytest.raises(FileExistsError, match="holds a saved RAG model, a different kind"):
        rag.index.save(tmp_path / "model")
    rag.index.save(tmp_path / "idx")
    with pytest.raises(FileExistsError, match="holds a saved DocumentIndex, a different kind"):
        rag.save_pretrained(tmp_path / "idx")
    (tmp_path / "idx" / "README.md").write_text("mine")
    with pytest.raises(FileExistsError, match=r"files its manifest does not list \(README.md\)"):
        rag.index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "README.md").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="it is a file"):
        rag.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x" and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- item 1: what is allowed
def test_same_kind_is_replaced_new_and_empty_folders_are_filled(rag, tmp_path):
    (tmp_path / "empty").mkdir()
    rag.index.save(tmp_path / "empty")
    rag.save_pretrained(tmp_path / "m")
    other = build_rag(seed=1)
    other.index.remove("p0")
    other.save_pretrained(tmp_path / "m")
    other.index.save(tmp_path / "empty")
    again = RAGSequence.from_pretrained(tmp_path / "m")
    assert torch.allclose(_loss(again), _loss(other)) and "p0" not in again.index
    assert len(DocumentIndex.load(tmp_path / "empty")) == len(PASSAGES) - 1
    assert _leftovers(tmp_path) == []


def _drop_kind(manifest_path: Path) -> None:
    manifest = json.loads(manifest_path.read_text())
    del manifest["kind"]
    manifest_path.write_text(json.dumps(manifest))


def test_saves_from_before_manifests_had_a_kind_load_and_are_replaced(rag, tmp_path):
    rag.index.save(tmp_path / "idx")
    rag.save_pretrained(tmp_path / "m")
    _drop_kind(tmp_path / "idx" / "manifest.json")
    _drop_kind(tmp_path / "m" / "manifest.json")
    assert len(DocumentIndex.load(tmp_path / "idx")) == len(PASSAGES)
    assert torch.allclose(_loss(RAGSequence.from_pretrained(tmp_path / "m")), _loss(rag))
    rag.index.save(tmp_path / "idx")
    rag.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["kind"] == "contextflow-rag"


def test_symlink_target_is_written_behind_the_link(rag, tmp_path):
    real = tmp_path / "real"
    rag.index.save(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    rag.index.remove("p0")
    rag.index.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(DocumentIndex.load(real)) == len(PASSAGES) - 1 and _leftovers(tmp_path) == []
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "later", target_is_directory=True)
    rag.save_pretrained(dangling)
    assert dangling.is_symlink() and (tmp_path / "later" / "manifest.json").is_file()


def test_stale_temp_and_backup_folders_of_a_killed_save_are_cleaned(rag, tmp_path):
    dead = 2**22 + 12345  # above the default pid_max, so no such process
    stale = [f".idx.cf-tmp-{dead}-abc123", f".idx.cf-old-{dead}-deadbeef", ".idx.tmp-a1b2c3d4", ".idx.old-0badf00d"]
    for name in stale + [".other.tmp-a1b2c3d4"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("half written")
    rag.index.save(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-a1b2c3d4", "idx"]


def test_failed_save_leaves_the_previous_one_and_no_temp(rag, tmp_path, monkeypatch):
    rag.index.save(tmp_path / "idx")
    before = sha256_file(tmp_path / "idx" / "manifest.json")
    monkeypatch.setattr("contextflow_core.retrieval.index._passages_jsonl",
                        lambda passages: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        rag.index.save(tmp_path / "idx")
    assert sha256_file(tmp_path / "idx" / "manifest.json") == before and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- item 4: the manifest covers every file
def _rewrite_manifest(root: Path, **changes) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"].update(changes)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if v is not None}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_planted_files_are_refused_on_load(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    evil = tiny_encoder(seed=5)  # other weights, read through a planted sentence-transformers redirect
    evil.model.save_pretrained(tmp_path / "m" / "question_encoder" / "evil")
    evil.tokenizer.save_pretrained(tmp_path / "m" / "question_encoder" / "evil")
    planted = tmp_path / "m" / "question_encoder" / "modules.json"
    planted.write_text(json.dumps([{"idx": 0, "name": "0", "path": "evil",
                                    "type": "sentence_transformers.models.Transformer"}]))
    with pytest.raises(ValueError, match="refusing to load .*question_encoder/modules.json.*not listed"):
        RAGSequence.from_pretrained(tmp_path / "m")
    planted.unlink()
    shutil.rmtree(tmp_path / "m" / "question_encoder" / "evil")
    shutil.copy(tmp_path / "m" / "generator" / "model.safetensors", tmp_path / "m" / "generator" / "extra.safetensors")
    with pytest.raises(ValueError, match="generator/extra.safetensors"):
        RAGSequence.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "generator" / "extra.safetensors").unlink()
    (tmp_path / "m" / "index" / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match="index/notes.json"):
        RAGSequence.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="notes.json.*not listed"):
        DocumentIndex.load(tmp_path / "m" / "index")


def test_removed_entry_with_swapped_file_is_refused(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "generator" / "model.safetensors"
    _rewrite_manifest(tmp_path / "m", **{"generator/model.safetensors": None})
    build_rag(seed=7).generator.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", weights)
    with pytest.raises(ValueError, match="generator/model.safetensors.*not listed"):
        RAGSequence.from_pretrained(tmp_path / "m")
    rag.index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["files"]["embeddings.safetensors"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="embeddings.safetensors"):
        DocumentIndex.load(tmp_path / "idx")


def test_manifest_entries_outside_the_folder_are_refused(rag, tmp_path):
    rag.save_pretrained(tmp_path / "m")
    (tmp_path / "outside.json").write_text("{}")
    _rewrite_manifest(tmp_path / "m", **{"../outside.json": sha256_file(tmp_path / "outside.json")})
    with pytest.raises(ValueError, match=r"entry '\.\./outside\.json' is not a plain file inside"):
        RAGSequence.from_pretrained(tmp_path / "m")


# ----------------------------------------------------------------------------- item 5: LoRA bases are pinned
def _save_base(folder: Path, seed: int = 0) -> None:
    tiny.tiny_generator(seed=seed).save_pretrained(folder)
    tiny.tiny_tokenizer().save_pretrained(folder)


def _lora_rag(base: str):
    generator, tokenizer = load_generator(base)
    rag = build_rag()
    rag.generator, rag.generator_tokenizer = generator, tokenizer
    add_lora(rag, r=4)
    with torch.no_grad():  # adapters that change the output, as after training
        for name, p in rag.generator.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return rag


def test_changed_base_is_refused_on_load_naming_both_hashes(tmp_path):
    _save_base(tmp_path / "base")
    rag = _lora_rag(str(tmp_path / "base"))
    rag.save_pretrained(tmp_path / "m")
    assert torch.allclose(_loss(RAGSequence.from_pretrained(tmp_path / "m")), _loss(rag), atol=1e-6)
    changed, _ = load_generator(str(tmp_path / "base"))
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    changed.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="changed since saving") as excinfo:
        RAGSequence.from_pretrained(tmp_path / "m")
    from contextflow_core.models.base_pin import weights_sha256

    assert weights_sha256(rag.generator) in str(excinfo.value) and weights_sha256(changed) in str(excinfo.value)
    assert "save_base=True" in str(excinfo.value)


def test_relative_base_path_does_not_follow_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save_base(tmp_path / "base", seed=0)
    rag = _lora_rag("base")  # relative to the folder the user was in
    rag.save_pretrained("m")
    elsewhere = tmp_path / "elsewhere"
    _save_base(elsewhere / "base", seed=3)  # a different model under the same relative name
    monkeypatch.chdir(elsewhere)
    again = RAGSequence.from_pretrained(tmp_path / "m")
    assert torch.allclose(_loss(again), _loss(rag), atol=1e-6)


def test_base_and_model_moved_together_are_found_beside_each_other(tmp_path):
    _save_base(tmp_path / "a" / "base")
    rag = _lora_rag(str(tmp_path / "a" / "base"))
    rag.save_pretrained(tmp_path / "a" / "m")
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert torch.allclose(_loss(RAGSequence.from_pretrained(tmp_path / "b" / "m")), _loss(rag), atol=1e-6)
    shutil.rmtree(tmp_path / "b" / "base")
    with pytest.raises(FileNotFoundError, match="never in the current folder or on the hub"):
        RAGSequence.from_pretrained(tmp_path / "b" / "m")


def test_lora_on_an_in_memory_base_fails_at_save_time_unless_the_base_is_saved(tmp_path):
    rag = add_lora(build_rag(), r=4)
    with pytest.raises(ValueError, match="no folder on disk.*save_base=True.*merge_and_unload"):
        rag.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []
    rag.save_pretrained(tmp_path / "m", save_base=True)
    again = RAGSequence.from_pretrained(tmp_path / "m")
    assert hasattr(again.generator, "peft_config") and torch.allclose(_loss(again), _loss(rag), atol=1e-6)


def test_base_is_checked_in_its_saved_dtype_then_cast(tmp_path):
    _save_base(tmp_path / "base")
    rag = _lora_rag(str(tmp_path / "base"))
    rag.save_pretrained(tmp_path / "m")
    again = RAGSequence.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert again.generator.get_base_model().model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


def test_lora_question_encoder_round_trips(tmp_path):
    rag = add_lora(build_rag(), generator=False, question_encoder=True, r=4)
    with torch.no_grad():
        for name, p in rag.question_encoder.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    rag.save_pretrained(tmp_path / "m")
    again = RAGSequence.from_pretrained(tmp_path / "m")
    assert hasattr(again.question_encoder.model, "peft_config")
    assert torch.allclose(again.question_encoder.encode(QS), rag.question_encoder.encode(QS), atol=1e-5)


def test_empty_current_folder_is_filled_in_place(rag, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    folder.mkdir()
    inode = folder.stat().st_ino
    monkeypatch.chdir(folder)
    rag.index.save(".")
    assert folder.stat().st_ino == inode and len(DocumentIndex.load(".")) == len(PASSAGES)
    assert _leftovers(tmp_path) == []


def test_demo_refuses_a_model_folder_with_user_files_before_running(user_dir, tmp_path):
    from contextflow_core import demo

    (tmp_path / "demo").mkdir()
    shutil.move(user_dir, tmp_path / "demo" / "model")
    with pytest.raises(FileExistsError, match="new or empty folder"):
        demo.main(quick=True, output_dir=str(tmp_path / "demo"))
    assert sorted(os.listdir(tmp_path / "demo")) == ["model"]
