"""Quality of the training objectives and of RAG-Token against joint RAG-Sequence, side by side.

Same data, steps, seeds and evaluation as `quality.py` (synthetic benchmark,
embedded defaults, LoRA on the generator, full question encoder); each row is
one way to train:

  joint-marginal  RAG-Sequence marginal likelihood, both sides (quality.py's "joint")
  lsr             REPLUG-LSR: retriever only, towards the LM's posterior over passages
  ralt            RA-DIT: generator only, each retrieved passage its own example
  emdr2           EMDR^2: reader on all K passages in one prompt, retriever on per-passage likelihoods
  rag-token       RAGToken (per-token marginal), both sides, decoded per token

Run:
    python benchmarks/objectives.py --quick     # ~10 min: 20 steps, 12 test questions, one seed
    python benchmarks/objectives.py             # quality.py's full mode: 60 steps, whole test split, seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality  # noqa: E402

# name -> (train_mode, objective, model class, evaluation decoding or None for the config's)
CONDITIONS = {
    "joint-marginal": ("joint", "marginal", "sequence", None),
    "lsr": ("retriever", "lsr", "sequence", None),
    "ralt": ("generator", "ralt", "sequence", None),
    "emdr2": ("joint", "emdr2", "sequence", None),
    "rag-token": ("joint", "marginal", "token", "token"),
}


def _train_config(cfg: quality.QualityConfig, name: str, seed: int):
    train_mode, objective, _, _ = CONDITIONS[name]
    config = quality.train_config(cfg, train_mode, seed)
    return dataclasses.replace(config, objective=objective)


def _model(index, cfg: quality.QualityConfig, kind: str):
    from contextflow_core import RAGSequence, RAGToken
    from contextflow_core.config import RagConfig

    cls = RAGToken if kind == "token" else RAGSequence
    return cls.from_defaults(index, config=RagConfig(num_docs=cfg.num_docs, temperature=cfg.temperature))


def run(name: str, seed: int, index, data, test, cfg: quality.QualityConfig) -> dict[str, Any]:
    from contextflow_core.training import make_dataloader, train_rag

    _, _, kind, decoding = CONDITIONS[name]
    torch.manual_seed(seed)
    model = _model(index, cfg, kind)
    loader = make_dataloader(data.train, batch_size=cfg.batch_size, shuffle=True, seed=seed)
    train_s, history = common.timed(lambda: train_rag(model, loader, None, config=_train_config(cfg, name, seed)))
    model.config = dataclasses.replace(model.config, objective="marginal")  # test loss: the same NLL for every row
    return quality.evaluate_run(name, seed, model, data, test, cfg, history, train_s, decoding or cfg.decoding)


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~10 min: 20 steps, 12 test questions, one seed")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--conditions", nargs="+", choices=list(CONDITIONS))
    ap.add_argument("--num-test", type=int)
    args = ap.parse_args(argv)
    cfg = quality.QUICK if args.quick else quality.FULL
    overrides = {"train_seeds": tuple(args.seeds) if args.seeds else None, "max_steps": args.steps,
                 "num_test": args.num_test}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    names = args.conditions or list(CONDITIONS)
    env = common.header("objectives", {**dataclasses.asdict(cfg), "conditions": names})
    start = time.perf_counter()

    data, test, index = quality.load_data(cfg)
    runs = []
    for name in names:
        for seed in cfg.train_seeds:
            r = run(name, seed, index, data, test, cfg)
            runs.append(r)
            common.log(f"  {name:<15} seed={seed} train {r['train_s']:.0f}s eval {r['eval_s']:.0f}s  " +
                       " ".join(f"{m}={r['metrics'][m]:.3f}" for m in quality.METRICS))
    rows = quality.aggregate(runs, names)
    common.log(quality.report(rows, cfg.num_docs))
    payload = {"env": env, "config": dataclasses.asdict(cfg), "conditions": names, "num_test": len(test),
               "table": rows, "runs": runs, "wall_s": time.perf_counter() - start}
    common.write_results("objectives", payload, args.quick)
    print(json.dumps({"benchmark": "objectives", "wall_s": round(payload["wall_s"])}), flush=True)
    return payload


if __name__ == "__main__":
    main()
