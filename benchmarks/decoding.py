"""Decoding: per-question latency and answers of the `thorough`, `fast` and `concat` modes.

RAGSequence.from_defaults (MiniLM + SmolLM2-135M-Instruct) over the synthetic corpus, K=5,
greedy, one question per call; the three modes alternate (rotated order per question), after
one untimed warm-up call per mode. Answers are scored with SQuAD exact match / F1 against the
gold answer, and the top source is checked against the gold passage.

    python benchmarks/decoding.py --quick
    python benchmarks/decoding.py
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("thorough", "fast", "concat")


@dataclass
class DecodingConfig:
    num_entities: int = 200
    num_questions: int = 10
    num_docs: int = 5
    max_new_tokens: int = 16
    modes: tuple = MODES
    seed: int = 0
    split: str = "test"
    models: str = "RAGSequence.from_defaults: all-MiniLM-L6-v2 + SmolLM2-135M-Instruct (float32), greedy"


def build_model(cfg: DecodingConfig):
    from contextflow_core import RAGSequence
    from contextflow_core.data import make_synthetic

    data = make_synthetic(num_entities=cfg.num_entities, seed=cfg.seed)
    p = data.passages
    start = time.perf_counter()
    rag = RAGSequence.from_defaults([x.text for x in p], ids=[x.id for x in p], titles=[x.title for x in p],
                                    metadatas=[x.metadata for x in p], num_docs=cfg.num_docs)
    return rag, data, time.perf_counter() - start


def run(rag, examples, cfg: DecodingConfig) -> dict[str, Any]:
    from contextflow_core.evaluation import exact_match, f1_score, normalize_answer

    def answer(question: str, mode: str):
        return rag.generate(questions=[question], num_docs=cfg.num_docs, max_new_tokens=cfg.max_new_tokens,
                            decoding=mode)[0]

    for mode in cfg.modes:  # warm-up
        answer(examples[0].question, mode)
    latency = {m: [] for m in cfg.modes}
    rows = []
    for i, ex in enumerate(examples):
        row = {"question": ex.question, "gold": ex.answer, "gold_ids": list(ex.gold_ids)}
        order = list(cfg.modes[i % len(cfg.modes):]) + list(cfg.modes[:i % len(cfg.modes)])
        for mode in order:
            t, ans = common.timed(lambda: answer(ex.question, mode))
            latency[mode].append(t)
            top = ans.sources[0][0].id if ans.sources else None
            row[mode] = {"text": ans.text, "latency_s": t, "score": ans.score,
                         "exact_match": exact_match(ans.text, [ex.answer]), "f1": f1_score(ans.text, [ex.answer]),
                         "contains_gold": normalize_answer(ex.answer) in normalize_answer(ans.text),
                         "top_source": top, "top_source_weight": ans.sources[0][1] if ans.sources else None,
                         "top_source_is_gold": top in ex.gold_ids}
        rows.append(row)
        common.log(f"  [{i + 1}/{len(examples)}] {ex.question!r} gold={ex.answer!r} | " +
                   " | ".join(f"{m}: {row[m]['text']!r} {row[m]['latency_s']:.2f}s" for m in cfg.modes))
    per_mode = {}
    for m in cfg.modes:
        per_mode[m] = {"latency_s": common.summary(latency[m]),
                       "exact_match": sum(r[m]["exact_match"] for r in rows) / len(rows),
                       "f1": sum(r[m]["f1"] for r in rows) / len(rows),
                       "contains_gold": sum(r[m]["contains_gold"] for r in rows) / len(rows),
                       "top_source_is_gold": sum(r[m]["top_source_is_gold"] for r in rows) / len(rows)}
    ratios = {f"{m}/fast": common.paired_ratios(latency[m], latency["fast"])
              for m in cfg.modes if m != "fast" and "fast" in cfg.modes}
    return {"per_mode": per_mode, "latency_ratios": ratios, "answers": rows}


def report(result: dict[str, Any]) -> str:
    rows = [{"mode": m, "latency s, median [IQR]": common.fmt(s["latency_s"]),
             "min-max s": f"{s['latency_s']['min']:.3g}-{s['latency_s']['max']:.3g}",
             "exact match": round(s["exact_match"], 3), "F1": round(s["f1"], 3),
             "answer contains gold": round(s["contains_gold"], 3),
             "top source = gold": round(s["top_source_is_gold"], 3)}
            for m, s in result["per_mode"].items()]
    out = [common.markdown_table(rows), ""]
    out.append(common.markdown_table([{"latency ratio": k, "median [IQR]": common.fmt(v)}
                                      for k, v in result["latency_ratios"].items()]))
    out.append("")
    modes = list(result["per_mode"])
    out.append(common.markdown_table([{"question": r["question"], "gold": r["gold"],
                                       **{m: r[m]["text"] for m in modes}} for r in result["answers"]]))
    return "\n".join(out)


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--num-questions", type=int)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    cfg = DecodingConfig(num_entities=60, num_questions=4) if args.quick else DecodingConfig()
    if args.num_questions:
        cfg = dataclasses.replace(cfg, num_questions=args.num_questions)
    env = common.header("decoding", dataclasses.asdict(cfg))
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rag, data, build_s = build_model(cfg)
    examples = getattr(data, cfg.split)[:cfg.num_questions]
    common.log(f"# corpus {len(data.passages)} passages; model + index built in {build_s:.1f}s; "
               f"{len(examples)} {cfg.split} questions")
    result = run(rag, examples, cfg)
    common.log(report(result))
    payload = {"env": env, "config": dataclasses.asdict(cfg), "build_s": build_s, **result,
               "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results("decoding", payload, args.quick)
    print(json.dumps({"benchmark": "decoding", "latency_median_s": {m: round(s["latency_s"]["median"], 3)
                                                                    for m, s in result["per_mode"].items()},
                      "exact_match": {m: s["exact_match"] for m, s in result["per_mode"].items()}}), flush=True)
    return payload


if __name__ == "__main__":
    main()
