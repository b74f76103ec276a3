"""train_rag sharded with FSDP2 on two CPU processes (gloo), its sharded checkpoints and their conversion.

The slow test launches tests/fsdp_tiny.py under torchrun (as tests/test_distributed.py does for DDP):
- the per-step training losses match a single-process run over the same global batches;
- a run resumed from its step-2 sharded checkpoint ends with exactly the parameters of the uninterrupted run;
- `consolidate_checkpoint` turns the sharded checkpoint into a `save_pretrained` folder that
  `RAGSequence.from_pretrained` loads with the trained weights.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsdp_tiny
import pytest
import torch
import train_tiny

from contextflow_core.config import TrainConfig
from contextflow_core.rag import RAGSequence
from contextflow_core.training import fsdp, make_dataloader, train_rag

SCRIPT = Path(__file__).with_name("fsdp_tiny.py")
ROOT = SCRIPT.parent.parent


def _launch(out: Path, digest: Path, *extra: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MASTER_ADDR="127.0.0.1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           "--output-dir", str(out), "--save-steps", "2", "--epochs", "2", "--digest-out", str(digest), *extra]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(Path(f"{digest}.rank{r}").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_fsdp_matches_single_process_resumes_exactly_and_consolidates(tmp_path):
    # 1. uninterrupted 2-process FSDP run: 8 questions, 2 per process per step, 2 epochs -> 4 steps
    full = _launch(tmp_path / "run", tmp_path / "full")
    assert full[0] == full[1], "the two ranks ended with different parameters"
    assert full[0]["global_step"] == 4 and full[0]["stop_reason"] == "completed"
    ckpt2, ckpt4 = tmp_path / "run" / "checkpoint-00000002", tmp_path / "run" / "checkpoint-00000004"
    manifest = json.loads((ckpt4 / "manifest.json").read_text())
    assert manifest["sharded"] is True
    assert sorted(n for n in manifest["files"] if n.startswith("shard-")) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    assert "model.safetensors" not in manifest["files"]

    # 2. the same global batches in one process (batch 4, no sharding): same per-step losses
    model, history = fsdp_tiny.run(tmp_path / "single", None, batch_size=4, epochs=2)
    single = [r["loss"] for r in history.train]
    assert len(single) == 4
    assert full[0]["losses"] == pytest.approx(single, rel=1e-5)

    # 3. resume the sharded step-2 checkpoint (in a copy of the run): bit-identical end state
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    resumed = _launch(tmp_path / "again", tmp_path / "resumed", "--resume",
                      str(tmp_path / "again" / "checkpoint-00000002"))
    assert resumed[0]["resumed_from"] == str(tmp_path / "again" / "checkpoint-00000002")
    assert resumed[0]["digest"] == full[0]["digest"]
    assert resumed[0]["losses"] == full[0]["losses"]

    # 4. sharded checkpoint -> the usual single folder, in this (non-distributed) process
    fresh = train_tiny.build_rag(seed=1)  # other weights: all trained ones must come from the checkpoint
    fsdp.consolidate_checkpoint(ckpt4, fresh, tmp_path / "model")
    assert fsdp_tiny.state_digest(fresh.state_dict()) == full[0]["digest"]
    loaded = RAGSequence.from_pretrained(tmp_path / "model")
    got, want = loaded.state_dict(), fresh.state_dict()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    assert not loaded.training  # a loaded model is in eval()

    # 5. an unsharded run refuses the sharded checkpoint by name (even when told to ignore differences)
    model = train_tiny.build_rag()
    config = train_tiny.tiny_config(tmp_path / "other", num_epochs=2, resume=str(ckpt2), resume_mismatch="current")
    with pytest.raises(ValueError, match="written with FSDP sharding"), pytest.warns(UserWarning):
        train_rag(model, make_dataloader(train_tiny.QA, batch_size=4, shuffle=False), config=config)
    assert ckpt2.is_dir()


def test_fsdp_needs_a_distributed_launch():
    model = train_tiny.build_rag()
    with pytest.raises(ValueError, match="not part of one; run under `torchrun"):
        train_rag(model, make_dataloader(train_tiny.QA, batch_size=4), config=train_tiny.tiny_config(fsdp="full_shard"))
    assert not fsdp.is_sharded(model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(fsdp="zero3"), "fsdp must be one of ('full_shard', 'shard_grad_op') or None, got 'zero3'"),
    (dict(fsdp_wrap_classes=["LlamaDecoderLayer"]), "is set but fsdp=None shards nothing"),
    (dict(fsdp="full_shard", fsdp_wrap_classes=[]), "fsdp_wrap_classes must be a non-empty list"),
    (dict(fsdp="full_shard", mixed_precision="fp16"), "use mixed_precision='bf16' or 'no'"),
    (dict(fsdp="full_shard", refresh_index_steps=2), "set refresh_index_steps=None"),
])
def test_fsdp_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**kwargs)


def test_wrap_policy_defaults_to_the_models_no_split_modules():
    model = train_tiny.build_rag()
    assert fsdp.wrap_class_names(model.generator) == {"LlamaDecoderLayer"}
    assert fsdp.wrap_class_names(model.question_encoder) == {"BertEmbeddings", "BertLayer"}
    assert fsdp.wrap_class_names(model.generator, ("LlamaMLP",)) == {"LlamaMLP"}
    assert len(fsdp._units(model.generator, {"LlamaDecoderLayer"})) == 2  # one unit per decoder layer


def test_accelerate_fsdp_environment_becomes_a_plan():
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP",
           "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, BertLayer"}
    assert fsdp.plan_from_env(env) == fsdp.FsdpPlan("shard_grad_op", ("LlamaDecoderLayer", "BertLayer"),
                                                    "accelerate environment")
    v2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}
    assert fsdp.plan_from_env({**v2, "FSDP_RESHARD_AFTER_FORWARD": "false"}).mode == "shard_grad_op"
    assert fsdp.plan_from_env({**v2, "FSDP_RESHARD_AFTER_FORWARD": "true"}).mode == "full_shard"
    assert fsdp.plan_from_env({}) is None
    with pytest.raises(ValueError, match="expected FULL_SHARD or SHARD_GRAD_OP"):
        fsdp.plan_from_env({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"})
    # TrainConfig.fsdp wins over the environment
    assert fsdp.plan(TrainConfig(fsdp="full_shard"), env).mode == "full_shard"


def test_consolidate_refuses_an_unsharded_checkpoint(tmp_path):
    model = train_tiny.build_rag()
    config = train_tiny.tiny_config(tmp_path / "run", num_epochs=1, max_steps=1)
    history = train_rag(model, make_dataloader(train_tiny.QA, batch_size=4, shuffle=False), config=config)
    with pytest.raises(ValueError, match=r"expected a sharded \(TrainConfig.fsdp\) checkpoint"):
        fsdp.consolidate_checkpoint(history.last_checkpoint, train_tiny.build_rag(), tmp_path / "model")
    assert not (tmp_path / "model").exists()
    manifest = json.loads((Path(history.last_checkpoint) / "manifest.json").read_text())
    assert manifest["sharded"] is False and "model.safetensors" in manifest["files"]
