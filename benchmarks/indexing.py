"""Indexing: passages/s of `DocumentIndex.from_texts` (TextEncoder.encode) against sentence-transformers' `encode`.

Both load the same all-MiniLM-L6-v2 files from the embedded package (offline): ContextFlow through
`default_question_encoder()`, sentence-transformers through `SentenceTransformer(<that folder>)`.
Rounds alternate the two (order swapped every round) after one warm-up each; ratios are paired per
round. Both use batch size 32 (sentence-transformers' default) and max length 256. The embeddings
of the two are compared (max abs difference).

    python benchmarks/indexing.py --quick
    python benchmarks/indexing.py
    python benchmarks/indexing.py --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


@dataclass
class IndexingConfig:
    num_entities: int = 400
    rounds: int = 5
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0


def load(cfg: IndexingConfig):
    from sentence_transformers import SentenceTransformer

    from contextflow_core.models.defaults import (
        ENCODER_PACKAGE,
        _package_dir,
        default_question_encoder,
    )

    ours = default_question_encoder().to(cfg.device)
    theirs = SentenceTransformer(str(_package_dir(ENCODER_PACKAGE) / "model"), device=cfg.device,
                                 local_files_only=True)
    return ours, theirs


def run(cfg: IndexingConfig) -> dict[str, Any]:
    from contextflow_core.data import make_synthetic
    from contextflow_core.retrieval import DocumentIndex

    texts = [p.text for p in make_synthetic(num_entities=cfg.num_entities, seed=cfg.seed).passages]
    ours, theirs = load(cfg)
    runners = {
        "contextflow": lambda: DocumentIndex.from_texts(texts, ours, batch_size=cfg.batch_size, show_progress=False),
        "sentence_transformers": lambda: theirs.encode(texts, batch_size=cfg.batch_size, convert_to_numpy=True,
                                                       normalize_embeddings=True, show_progress_bar=False),
    }
    index, st = runners["contextflow"](), runners["sentence_transformers"]()  # warm-up
    diff = float((index.embeddings - torch.from_numpy(st)).abs().max())
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(cfg.rounds):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            t, _ = common.timed(runners[name], cfg.device)
            times[name].append(t)
        common.log(f"  round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in runners))
    rates = {n: common.summary([len(texts) / t for t in v]) for n, v in times.items()}
    ratio = common.summary([b / a for a, b in zip(times["contextflow"], times["sentence_transformers"])])
    return {"passages": len(texts), "mean_chars": sum(map(len, texts)) / len(texts), "seconds": times,
            "passages_per_s": rates, "throughput_ratio_contextflow_over_st": ratio, "max_abs_embedding_diff": diff}


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="120 entities, 3 rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    cfg = IndexingConfig(num_entities=120, rounds=3) if args.quick else IndexingConfig()
    cfg = dataclasses.replace(cfg, device=args.device)
    env = common.header("indexing", dataclasses.asdict(cfg), args.device)
    result = run(cfg)
    env["load_average_end"] = common._loadavg()
    common.log(common.markdown_table([{"encoder": n, "passages/s, median [IQR]": common.fmt(s)}
                                      for n, s in result["passages_per_s"].items()]))
    common.log(f"throughput ratio contextflow / sentence-transformers (paired): "
               f"{common.fmt(result['throughput_ratio_contextflow_over_st'])}; "
               f"max |embedding difference| {result['max_abs_embedding_diff']:.2e}")
    if not args.no_write:
        suffix = "" if args.device == "cpu" else f"_{args.device}"
        common.write_results(f"indexing{suffix}", {"env": env, "config": dataclasses.asdict(cfg), **result},
                             args.quick)
    print(json.dumps({"benchmark": "indexing", "passages": result["passages"],
                      "ratio_median": round(result["throughput_ratio_contextflow_over_st"]["median"], 3)}), flush=True)
    return result


if __name__ == "__main__":
    main()
