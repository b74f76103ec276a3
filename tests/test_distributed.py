"""train_rag under DDP: two CPU processes (gloo, launched by torchrun) finish with identical parameters.

Slow (two interpreters import torch and transformers) but part of CI: it is the only
check that the loop's collectives (non-finite agreement, loss reduction, RNG gather,
evaluation sums) line up across processes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("train_tiny.py")
ROOT = SCRIPT.parent.parent


@pytest.mark.slow
def test_two_process_cpu_run_ends_with_identical_parameters(tmp_path):
    out, digest = tmp_path / "run", tmp_path / "digest"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MASTER_ADDR="127.0.0.1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    # --standalone: torchrun picks a free local port itself (this process may not open sockets)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           "--output-dir", str(out), "--save-steps", "2", "--epochs", "2", "--digest-out", str(digest)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [Path(f"{digest}.rank{r}").read_text().split() for r in (0, 1)]
    assert lines[0] == lines[1], "the two ranks ended with different parameters"
    # 8 questions, batch 2: 4 batches, sharded over 2 ranks -> 2 optimizer steps per epoch, 2 epochs
    assert lines[0][1:] == ["4", "completed"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [2, 4]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000002", "checkpoint-00000004"]
