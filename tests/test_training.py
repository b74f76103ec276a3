"""train_rag on tiny models: the loss falls, exactly the right parameters move, guards and records."""
import json
import math

import pytest
import torch
from train_tiny import QA, all_params, build_rag, loaders, tiny_config

from contextflow_core.config import PromptConfig, TrainConfig
from contextflow_core.evaluation import evaluate
from contextflow_core.training import make_dataloader, normalize_batch, train_rag
from contextflow_core.training.data import SeededSampler


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest, and reproducibly, on one thread (the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _changed(before: dict, model) -> set:
    after = all_params(model)
    return {n for n in before if n in after and not torch.equal(before[n], after[n])}


def test_joint_overfit_lowers_the_loss_and_moves_every_trainable_parameter():
    model = build_rag()
    train, _ = loaders()
    start = evaluate(model, QA, generate=False)["loss"]
    before = all_params(model)
    quiet = TrainConfig(progress=False, plot=False, resume=False, log_every=1)  # epochs and lr at their defaults
    history = train_rag(model, train, num_epochs=6, learning_rate=1e-2, config=quiet)
    end = evaluate(model, QA, generate=False)["loss"]
    assert end < 0.7 * start, (start, end)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(before) and _changed(before, model) == trainable
    assert history.global_step == 24 and history.stop_reason == "completed"
    assert history.train[-1]["loss"] < history.train[0]["loss"]


@pytest.mark.parametrize("mode, moving, frozen", [
    ("generator", "generator.", "question_encoder."),
    ("retriever", "question_encoder.", "generator."),
])
def test_train_mode_freezes_the_other_side(mode, moving, frozen):
    model = build_rag()
    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, train_mode=mode, max_steps=2))
    changed = _changed(before, model)
    assert changed == {n for n in before if n.startswith(moving)}
    assert model.config.freeze_retriever is False and model.config.freeze_generator is False  # restored


def test_lora_moves_only_adapters_and_the_encoder():
    model = build_rag()
    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, generator_lora=True, lora_r=4, max_steps=3))
    assert hasattr(model.generator, "peft_config")
    after = all_params(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("generator.")} == {n for n in after if "lora_" in n}
    assert all(after[n].abs().sum() > 0 for n in after if "lora_B" in n)  # lora_B starts at zero
    encoder = {n for n in before if n.startswith("question_encoder.")}
    assert {n for n in encoder if not torch.equal(before[n], after[n])} == encoder
    for name, p in after.items():  # peft renames base weights; map them back and compare
        if name.startswith("generator.") and "lora_" not in name:
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, before[plain]), name


def test_separate_learning_rates_reach_their_groups():
    model = build_rag()
    config = tiny_config(None, question_encoder_lr=1e-4, generator_lr=3e-3, scheduler="constant", max_steps=1)
    record = train_rag(model, loaders()[0], config=config).train[0]
    assert record["lr/question_encoder"] == pytest.approx(1e-4) and record["lr/generator"] == pytest.approx(3e-3)


def test_accumulation_max_steps_and_list_of_singular_key_batches():
    batches = [{"question": [q for q, _, _ in QA[i:i + 2]], "answer": [a for _, a, _ in QA[i:i + 2]]}
               for i in range(0, 8, 2)]
    history = train_rag(build_rag(), batches, config=tiny_config(None, gradient_accumulation_steps=2, max_steps=3))
    assert history.global_step == 3 and history.stop_reason == "max_steps"
    assert history.epochs_completed == 1  # 2 optimizer steps per epoch of 4 batches


def test_early_stopping_after_patience_evaluations(tmp_path):
    train, val = loaders()
    config = tiny_config(tmp_path, learning_rate=1e-9, eval_steps=1, early_stopping_patience=2,
                         early_stopping_min_delta=1.0)
    history = train_rag(build_rag(), train, val, config=config)
    assert history.stop_reason == "early_stopping" and history.global_step == 3
    assert [r["step"] for r in history.eval] == [1, 2, 3] and history.best_step == 1
    # resuming an early-stopped run does not train further (same set-up: a changed learning rate is refused)
    assert train_rag(build_rag(), train, val, config=tiny_config(tmp_path, eval_steps=1, resume="auto",
                                                                 learning_rate=1e-9,
                                                                 early_stopping_patience=2)).global_step == 3


def test_records_metrics_jsonl_plot_and_summary(tmp_path, capsys):
    train, val = loaders()
    config = tiny_config(tmp_path, num_epochs=2, log_every=2, plot=True, progress=True, eval_generate=True,
                         eval_max_new_tokens=3)
    history = train_rag(build_rag(), train, val, config=config)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines] == ["train", "train", "eval", "train", "train", "eval"]
    assert [r["step"] for r in lines] == [2, 4, 4, 6, 8, 8] and len(history.records) == 6
    assert {"loss", "lr", "grad_norm", "items_per_s"} <= set(lines[0]) and lines[2]["exact_match"] is not None
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "train_config.json").read_text())["num_epochs"] == 2
    captured = capsys.readouterr()
    assert "training summary" in captured.out and "best_val_loss" in captured.out
    assert "training" in captured.err  # the tqdm bar


def _nan_after(model, calls_ok: int):
    original, count = model.score, {"n": 0}

    def score(*args, **kwargs):
        count["n"] += 1
        out = original(*args, **kwargs)
        return out * math.nan if count["n"] > calls_ok else out

    model.score = score


def test_one_nonfinite_step_is_skipped_with_a_warning():
    model = build_rag()
    original, count = model.score, {"n": 0}

    def score(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs) * (math.nan if count["n"] == 2 else 1.0)

    model.score = score
    with pytest.warns(UserWarning, match="non-finite loss .* skipped"):
        history = train_rag(model, loaders()[0], config=tiny_config(None, max_steps=3))
    assert history.skipped_steps == 1 and history.global_step == 3
    assert all(math.isfinite(r["loss"]) for r in history.train)


def test_nonfinite_steps_in_a_row_stop_with_the_last_good_checkpoint(tmp_path):
    from contextflow_core.training.checkpoint import latest_checkpoint, read_checkpoint

    model = build_rag()
    _nan_after(model, calls_ok=2)
    config = tiny_config(tmp_path, save_steps=1, max_nonfinite_steps=3)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"max_nonfinite_steps=3.*checkpoint-00000002"):
        train_rag(model, loaders()[0], config=config)
    last = latest_checkpoint(tmp_path)
    assert last.name == "checkpoint-00000002"
    saved = read_checkpoint(last, model)["params"]
    assert all(torch.equal(saved[n], p.detach().cpu()) for n, p in model.named_parameters() if p.requires_grad)


def test_empty_dataloader_is_rejected():
    with pytest.raises(ValueError, match="train_dataloader: expected at least one batch"):
        train_rag(build_rag(), [], config=tiny_config(None))


def test_answer_longer_than_the_budget_names_the_example():
    model = build_rag(prompt=PromptConfig(max_length=120, system_prompt=None))
    data = [QA[0], ("Who?", "x" * 200, [])]
    with pytest.raises(ValueError, match=r"example 1 .*max_length"):
        train_rag(model, make_dataloader(data, batch_size=2), config=tiny_config(None))
    batches = [{"questions": [q for q, _, _ in data], "answers": [a for _, a, _ in data]}]
    with pytest.raises(ValueError, match=r"batch 0 of epoch 0, example\(s\) \[1\].*max_length"):
        train_rag(model, batches, config=tiny_config(None))


@pytest.mark.parametrize("kwargs, field", [
    ({"train_mode": "both"}, "train_mode"),
    ({"generator_lora": True, "train_mode": "retriever"}, "generator_lora"),
    ({"generator_lr": 1e-3, "train_mode": "retriever"}, "generator_lr"),
    ({"question_encoder_lr": 1e-3, "train_mode": "generator"}, "question_encoder_lr"),
    ({"save_steps": 10}, "save_steps"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"scheduler": "reduce_lr_on_plateau"}, "scheduler"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"resume": True}, "resume"),
    ({"early_stopping_patience": 2, "eval_on_epoch_end": False}, "early_stopping_patience"),
])
def test_config_rejects_contradictions_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_keyword_arguments_and_config_must_agree():
    with pytest.raises(ValueError, match="num_epochs: got 2 as an argument and 5 in config"):
        train_rag(build_rag(), loaders()[0], num_epochs=2, config=TrainConfig(num_epochs=5))
    with pytest.raises(ValueError, match="val_dataloader: eval_steps=1 needs validation data"):
        train_rag(build_rag(), loaders()[0], config=tiny_config(None, eval_steps=1))


@pytest.mark.parametrize("extra", [{"mixed_precision": "bf16"}, {"gradient_checkpointing": True}])
def test_bf16_and_gradient_checkpointing_run(extra):
    model = build_rag()
    history = train_rag(model, loaders()[0], config=tiny_config(None, max_steps=2, **extra))
    assert history.global_step == 2 and all(math.isfinite(r["loss"]) for r in history.train)


def test_seeded_dataloader_order_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        sampler = SeededSampler(8, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1) and order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    batch = next(iter(make_dataloader(QA, batch_size=3, shuffle=False)))
    assert batch == {"questions": [q for q, _, _ in QA[:3]], "answers": [a for _, a, _ in QA[:3]],
                     "gold_ids": [g for _, _, g in QA[:3]], "aliases": [[a] for _, a, _ in QA[:3]]}
    squad = normalize_batch({"question": ["q?"], "answer": [["a", "b"]]})
    assert squad["answers"] == ["a"] and squad["aliases"] == [["a", "b"]]
    with pytest.raises(ValueError, match="batch: expected keys 'questions'"):
        normalize_batch({"text": ["x"]})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_cuda_training_evaluation_and_checkpoints(tmp_path, precision):
    from contextflow_core.training.checkpoint import latest_checkpoint, read_checkpoint

    model = build_rag()
    train, val = loaders()
    config = tiny_config(tmp_path, max_steps=4, mixed_precision=precision, eval_steps=2, save_steps=2,
                         eval_generate=True, eval_max_new_tokens=3)
    history = train_rag(model, train, val, config=config)
    assert next(model.generator.parameters()).is_cuda and next(model.question_encoder.parameters()).is_cuda
    assert history.global_step == 4 and [r["step"] for r in history.eval] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in history.train + history.eval)
    assert "rank0.cuda0" in read_checkpoint(latest_checkpoint(tmp_path), model)["rng_tensors"]
    resumed = build_rag()
    again = train_rag(resumed, train, val, config=tiny_config(tmp_path, max_steps=6, mixed_precision=precision,
                                                              save_steps=2, resume="auto"))
    assert again.resumed_from.endswith("checkpoint-00000004") and again.global_step == 6


def test_plot_is_skipped_with_a_warning_without_matplotlib(monkeypatch, tmp_path):
    import sys

    from contextflow_core.training import TrainHistory, plot_history

    history = TrainHistory(train=[{"type": "train", "step": 1, "loss": 2.0}])
    assert plot_history(history, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert plot_history(history, tmp_path / "b.png") is None
    assert not (tmp_path / "b.png").exists()
