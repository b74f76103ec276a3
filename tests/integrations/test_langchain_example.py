"""Smoke test: examples/langchain_finetune_and_chain.py runs end to end on tiny models in under a minute."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("langchain_core")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "langchain_finetune_and_chain.py")


def test_example_fine_tunes_and_swaps_contextflow_into_the_chain():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, EXAMPLE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for section in ("== before: store retriever + base generator", "== training:",
                    "== after: ContextFlow retriever + fine-tuned generator", "== after: ContextFlowRAG",
                    "top source of Q1: p"):
        assert section in out, out
    first, last = map(float, re.search(r"first epoch -> last epoch: ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < first
    assert elapsed < 60, f"example took {elapsed:.0f} s"
