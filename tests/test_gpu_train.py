"""benchmarks/gpu_train.py: its CPU dry run (tiny models, every variant) and the parameter counts it states."""
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu_train  # noqa: E402


def test_stated_model_sizes_are_the_built_ones():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):  # no memory: shapes only
        gen = LlamaForCausalLM(LlamaConfig(**gpu_train.GENERATOR))
        enc = BertModel(BertConfig(**gpu_train.ENCODER), add_pooling_layer=False)
    assert sum(p.numel() for p in gen.parameters()) == 1_073_809_408
    assert sum(p.numel() for p in enc.parameters()) == 22_565_376
    assert "1,073,809,408" in gpu_train.__doc__ and "22,565,376" in gpu_train.__doc__


@pytest.mark.slow
def test_dry_run_writes_every_variant(tmp_path):
    out = tmp_path / "gpu_train.json"
    report = gpu_train.main(["--dry-run", "--out", str(out), "--peak-tflops", "1.0"])
    assert json.loads(out.read_text()) == report
    assert set(report["results"]) == {"contextflow", "contextflow_gc", "hf", "hf_gc"}
    shape = report["shape"]
    assert shape["sequences_per_step"] == shape["batch_size"] * shape["num_docs"]
    assert shape["tokens_per_step"] == shape["sequences_per_step"] * shape["sequence_length"]
    for row in report["results"].values():
        assert row["seconds_per_step"] > 0 and row["tokens_per_s"] > 0
        assert row["mfu"] == pytest.approx(row["model_tflops_per_s"] / 1.0)
        assert row["loss_last"] < row["loss_first"] + 1.0  # it trained (random init: a loose check)
    # the LM head is counted on the answer positions for ContextFlow, on every position for HF
    results = report["results"]
    assert results["hf"]["model_flops_per_step"] > results["contextflow"]["model_flops_per_step"]
    assert report["params"]["generator"] == report["params"]["generator_body"] + report["params"]["lm_head"]
