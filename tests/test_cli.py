"""The `contextflow` command on tiny models saved to disk, its dataclass flags, and the example script."""
import argparse
import dataclasses
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import tiny
from train_tiny import PASSAGES, QA, tiny_encoder

from contextflow_core import cli
from contextflow_core.config import TrainConfig
from contextflow_core.retrieval import DocumentIndex

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest, and reproducibly, on one thread (the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    encoder = tiny_encoder()
    encoder.model.save_pretrained(root / "enc")
    encoder.tokenizer.save_pretrained(root / "enc")
    tiny.tiny_generator(hidden=32).save_pretrained(root / "gen")
    tiny.tiny_tokenizer().save_pretrained(root / "gen")
    qa = [{"question": q, "answer": a, "gold_ids": g} for q, a, g in QA]
    return {
        "root": root, "enc": str(root / "enc"), "gen": str(root / "gen"),
        "passages": _write_jsonl(root / "passages.jsonl", [{"id": f"p{i}", "text": t} for i, t in enumerate(PASSAGES)]),
        "train": _write_jsonl(root / "train.jsonl", qa[:6]), "test": _write_jsonl(root / "test.jsonl", qa[6:]),
    }


def test_index_train_eval_ask_end_to_end(files, tmp_path, capsys):
    index_dir, out = tmp_path / "index", tmp_path / "run"
    assert cli.main(["index", "build", "--passages", files["passages"], "--out", str(index_dir),
                     "--encoder", files["enc"]]) == 0
    assert len(DocumentIndex.load(index_dir)) == len(PASSAGES)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"learning-rate": 1e-3, "max_steps": 2, "num_docs": 2, "progress": True}))
    assert cli.main(["train", "--config", str(config), "--index", str(index_dir), "--encoder", files["enc"],
                     "--generator", files["gen"], "--train", files["train"], "--val", files["test"],
                     "--batch-size", "2", "--output-dir", str(out), "--no-progress", "--no-plot"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["type"] == "eval" and records[-1]["step"] == 2 and records[0]["lr"] < 1e-3
    assert "training summary" not in capsys.readouterr().out  # --no-progress overrode the config file
    metrics_file = tmp_path / "m.json"
    assert cli.main(["eval", "--model", str(out / "model"), "--data", files["test"], "--decoding", "fast",
                     "--max-new-tokens", "3", "--num-docs", "2", "--json", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["num_examples"] == 2 and metrics["num_docs"] == 2 and 0 <= metrics["recall@k"] <= 1
    capsys.readouterr()
    assert cli.main(["ask", "--model", str(out / "model"), "--json", "--max-new-tokens", "3", "--num-docs", "2",
                     "What", "is", "the", "capital", "of", "Quenia?"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"answer", "score", "sources"} and len(answer["sources"]) == 2


def test_every_train_config_field_becomes_a_typed_flag():
    parser = argparse.ArgumentParser()
    names = cli.add_dataclass_arguments(parser, TrainConfig)
    assert names == [f.name for f in dataclasses.fields(TrainConfig)]
    args = parser.parse_args(["--num-epochs", "4", "--generator-lora", "--no-plot", "--max-steps", "none",
                              "--lora-target-modules", "q_proj", "v_proj", "--resume", "false",
                              "--question-encoder-lr", "1e-4"])
    config = cli.dataclass_from_args(TrainConfig, args)
    assert config == TrainConfig(num_epochs=4, generator_lora=True, plot=False, max_steps=None,
                                 lora_target_modules=["q_proj", "v_proj"], resume=False, question_encoder_lr=1e-4)
    assert cli.dataclass_from_args(TrainConfig, parser.parse_args([])) == TrainConfig()
    help_text = parser.format_help()
    assert "Passes over the training data. (default: 3)" in help_text.replace("\n", " ").replace("  ", " ")
    with pytest.raises(SystemExit):
        parser.parse_args(["--num-epochs", "three"])


def test_config_file_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"num_epochs": 2, "nonsense": 1}))
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--config", str(bad), "--train", "x.jsonl", "--output-dir", str(tmp_path)])
    assert exc.value.code == 2 and "unknown option(s) ['nonsense']" in capsys.readouterr().err
    assert cli.main(["train", "--output-dir", str(tmp_path)]) == 1
    assert "--train: required" in capsys.readouterr().err
    assert cli.main(["train", "--train", "x.jsonl", "--train-mode", "both", "--output-dir", str(tmp_path)]) == 1
    assert "train_mode must be one of" in capsys.readouterr().err


def test_yaml_config_when_pyyaml_is_installed(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    path.write_text("num-epochs: 7\ngenerator_lora: true\n")
    assert cli.load_config_file(str(path)) == {"num_epochs": 7, "generator_lora": True}


def test_demo_version_and_help(monkeypatch, capsys):
    import contextflow_core.demo as demo

    calls = []
    monkeypatch.setattr(demo, "main", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["demo", "--quick"]) == 0 and calls == [{"quick": True, "output_dir": "runs/demo"}]
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    usage = capsys.readouterr().out
    assert exc.value.code == 0 and all(c in usage for c in ("index", "train", "eval", "ask", "demo"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("contextflow 0.")


def test_example_script_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_on_synthetic.py", "--output-dir", str(tmp_path)])
    result = runpy.run_path(str(ROOT / "examples" / "train_on_synthetic.py"), run_name="__main__")
    assert "main" in result
    out = capsys.readouterr().out
    assert "test questions" in out and "before" in out and (tmp_path / "metrics.jsonl").is_file()
