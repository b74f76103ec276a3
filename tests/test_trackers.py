"""TrainConfig.report_to: accelerate's trackers get the loop's records (TensorBoard read back from its files)."""
from __future__ import annotations

import json

import pytest
from train_tiny import build_rag, loaders, tiny_config, trainable_state

from contextflow_core.cli import build_parser, dataclass_from_args
from contextflow_core.config import TRACKERS, TrainConfig
from contextflow_core.training import trackers as trackers_module
from contextflow_core.training import train_rag


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(folder.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {folder}"
    found = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def test_tensorboard_gets_loss_learning_rate_and_eval_metrics_per_logged_step(tmp_path):
    pytest.importorskip("tensorboard")
    model = build_rag()
    train, val = loaders()
    config = tiny_config(tmp_path / "run", num_epochs=1, max_steps=3, report_to=["tensorboard"], eval_steps=3,
                         warmup_ratio=0.5)
    history = train_rag(model, train, val, config=config)
    scalars = _scalars(tmp_path / "run" / "trackers")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["type"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3] == [r["step"] for r in train_lines]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in train_lines], rel=1e-6)
    lrs = [v for _, v in scalars["train/lr"]]
    assert lrs == pytest.approx([r["lr"] for r in train_lines], rel=1e-6) and lrs[0] > lrs[-1] >= 0  # warm-up, decay
    assert "train/lr/question_encoder" in scalars and "train/lr/generator" in scalars
    assert scalars["eval/loss"] == [(3, pytest.approx(history.eval[-1]["loss"], rel=1e-6))]
    assert "eval/recall@1" in scalars or any(tag.startswith("eval/recall") for tag in scalars)


def test_report_to_none_writes_no_tracker_files(tmp_path):
    model = build_rag()
    train, _ = loaders()
    train_rag(model, train, None, config=tiny_config(tmp_path / "run", max_steps=1, report_to="none"))
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and not (tmp_path / "run" / "trackers").exists()


@pytest.mark.parametrize("value, fragment", [
    (["tensorbord"], "report_to: unknown tracker(s) ['tensorbord']"),
    (["none", "wandb"], "'none' turns tracking off"),
    (7, "report_to must be a tracker name"),
])
def test_bad_report_to_is_refused_by_name(value, fragment):
    with pytest.raises(ValueError) as info:
        TrainConfig(report_to=value, output_dir="x")
    assert fragment in str(info.value)


def test_a_file_tracker_needs_output_dir():
    with pytest.raises(ValueError, match=r"report_to: \['tensorboard'\] write\(s\) event files under output_dir"):
        TrainConfig(report_to=["tensorboard"])
    assert TrainConfig(report_to="wandb").report_to == ["wandb"] and TrainConfig().report_to == []


def test_a_missing_tracker_package_is_refused_before_training_with_the_pip_command(tmp_path, monkeypatch):
    real = trackers_module.module_available
    monkeypatch.setattr(trackers_module, "module_available", lambda m: m != "wandb" and real(m))
    model = build_rag()
    before = trainable_state(model)
    train, _ = loaders()
    with pytest.raises(ValueError, match=r"report_to: 'wandb' needs the package 'wandb'.*pip install wandb"):
        train_rag(model, train, None, config=tiny_config(tmp_path / "run", report_to=["wandb"]))
    after = trainable_state(model)
    assert all((before[n] == after[n]).all() for n in before) and not (tmp_path / "run").exists()


def test_the_tracker_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(TRACKERS) == set(LOGGER_TYPE_TO_CLASS) == set(trackers_module.TRACKER_PACKAGES)


def test_cli_flag_report_to_reaches_train_config():
    parser = build_parser()
    args = parser.parse_args(["train", "--output-dir", "runs/x", "--report-to", "tensorboard", "wandb"])
    assert dataclass_from_args(TrainConfig, args).report_to == ["tensorboard", "wandb"]
    args = parser.parse_args(["train", "--output-dir", "runs/x", "--report-to", "none"])
    assert dataclass_from_args(TrainConfig, args).report_to == []
