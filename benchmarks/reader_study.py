"""Reader study: the embedded generator with and without the shipped reader adapter.

The raw embedded generator (`from_defaults(..., reader=False)`) against the same generator with the
reader adapter ContextFlow ships (`reader=True`, the default), on four parts:

  readme     the README quick start: its two passages and two questions, generated as the README does
             (K=2, 16 new tokens, default decoding);
  unseen     zero-shot on the unseen-template corpus of `unseen_corpus.py` (templates, relations and
             attribute kinds the reader never saw in training), its `evaluate_unseen` (K=2, fast);
  synthetic  zero-shot on the synthetic benchmark's held-out test split (quality.py's "untrained", K=5);
  joint      joint training (quality.py's "joint") starting from the raw generator vs from the reader,
             same steps, batches and seeds, evaluated on the synthetic test split.

The synthetic parts reuse quality.py's data, conditions and evaluation (`quality.run_condition`); the
retriever temperature is the library's default (None: 0.05 for the embedded encoder).

    python benchmarks/reader_study.py --quick    # one seed, 30 steps, 60 entities: ~15-20 min on 2 cores
    python benchmarks/reader_study.py            # 100 entities, 60 steps, seeds 0 1 2
    python benchmarks/reader_study.py --quick --parts readme unseen   # zero-shot parts only

Results: benchmarks/results/reader_study[_quick].json, rewritten after each part ("complete" is true
once every part has run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality  # noqa: E402

STARTS = {"raw": False, "reader": True}  # name -> `reader=` of from_defaults
PARTS = ("readme", "unseen", "synthetic", "joint")
README_PASSAGES = ("Zorblat is the capital of Quenia.", "The river Mivo flows through Tarsk.")
README_QA = (("What is the capital of Quenia?", "Zorblat"), ("Which river flows through Tarsk?", "Mivo"))

QUICK = dataclasses.replace(quality.QUICK, temperature=None, max_steps=30, num_test=None)
FULL = dataclasses.replace(quality.FULL, temperature=None)


def readme_run(reader: bool) -> dict[str, Any]:
    """The README quick start as written (K=2, 16 new tokens, default decoding), both questions."""
    from contextflow_core import RAGSequence
    from contextflow_core.evaluation.metrics import qa_metrics

    rag = RAGSequence.from_defaults(list(README_PASSAGES), reader=reader)
    answers = [rag.generate(questions=[q], max_new_tokens=16, num_docs=2)[0] for q, _ in README_QA]
    metrics = qa_metrics([a.text for a in answers], [gold for _, gold in README_QA])
    return {"metrics": metrics, "num_test": len(README_QA),
            "answers": [{"question": q, "gold": gold, "answer": a.text,
                         "sources": [(p.id, round(w, 3)) for p, w in a.sources]}
                        for (q, gold), a in zip(README_QA, answers)]}


def unseen_run(reader: bool) -> dict[str, Any]:
    """Zero-shot EM / F1 / recall on the unseen-template corpus (`unseen_corpus.evaluate_unseen`: K=2, fast)."""
    from unseen_corpus import corpus, evaluate_unseen

    from contextflow_core import RAGSequence

    passages, qa = corpus()
    rag = RAGSequence.from_defaults([p.text for p in passages], ids=[p.id for p in passages],
                                    metadatas=[p.metadata for p in passages], reader=reader)
    return {"metrics": evaluate_unseen(rag), "num_test": len(qa)}


def synthetic_runs(cfg: quality.QualityConfig, condition: str) -> list[dict[str, Any]]:
    """quality.py's `condition` ("untrained": zero-shot, or "joint") from each start, seed by seed."""
    data, test, index = quality.load_data(cfg)
    part = "synthetic" if condition == "untrained" else "joint"
    runs = []
    for seed in cfg.train_seeds[:1] if condition == "untrained" else cfg.train_seeds:
        for start, reader in STARTS.items():
            r = quality.run_condition(condition, seed, index, data, test, dataclasses.replace(cfg, reader=reader))
            r.update(start=start, part=part, num_test=len(test))
            runs.append(r)
            common.log(f"  {part:<9} from {start:<6} seed={seed} train {r['train_s']:.0f}s "
                       f"eval {r['eval_s']:.0f}s  " + " ".join(f"{m}={r['metrics'][m]:.3f}" for m in quality.METRICS))
    return runs


def zero_shot_runs(part: str, fn: Callable[[bool], dict[str, Any]]) -> list[dict[str, Any]]:
    runs = []
    for start, reader in STARTS.items():
        seconds, r = common.timed(lambda: fn(reader))
        r.update(part=part, start=start, seed=None, eval_s=seconds)
        runs.append(r)
        common.log(f"  {part:<9} from {start:<6} {seconds:.0f}s  "
                   + " ".join(f"{k}={v:.3f}" for k, v in r["metrics"].items() if isinstance(v, float)))
    return runs


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (part, start): mean EM and F1 over seeds, with min-max where several."""
    rows = []
    for part in PARTS:
        for start in STARTS:
            mine = [r for r in runs if r["part"] == part and r["start"] == start]
            if mine:
                rows.append({"part": part, "start": start, "seeds": len(mine), "num_test": mine[0]["num_test"],
                             **{m: _spread([r["metrics"][m] for r in mine]) for m in ("exact_match", "f1")}})
    return rows


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def report(rows: list[dict[str, Any]]) -> str:
    def cell(s):
        return f"{s['mean']:.3f}" if s["min"] == s["max"] else f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})"

    return common.markdown_table([{"part": r["part"], "start": r["start"], "questions": r["num_test"],
                                   "seeds": r["seeds"], "exact match": cell(r["exact_match"]),
                                   "F1": cell(r["f1"])} for r in rows])


def _reader_record() -> dict[str, Any]:
    """The shipped reader's identity: its files' sha256 and the command that made it."""
    from contextflow_core.models.reader import verify_reader

    record = verify_reader()
    return {"files": record["files"], "command": record.get("command")}


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 30 steps, 60 entities (~15-20 min on 2 cores)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--entities", type=int)
    ap.add_argument("--num-test", type=int)
    ap.add_argument("--tag", default="", help="results file suffix for investigation runs")
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse(argv)
    name = "reader_study" + (f"_{args.tag}" if args.tag else "")
    overrides = {"train_seeds": tuple(args.seeds) if args.seeds else None, "max_steps": args.steps,
                 "num_entities": args.entities, "num_test": args.num_test}
    cfg = dataclasses.replace(QUICK if args.quick else FULL, **{k: v for k, v in overrides.items() if v is not None})
    env = common.header(name, {"parts": args.parts, **dataclasses.asdict(cfg)})
    start = time.perf_counter()
    payload = {"env": env, "config": dataclasses.asdict(cfg), "parts": args.parts, "reader": _reader_record(),
               "complete": False, "runs": []}
    jobs = {"readme": lambda: zero_shot_runs("readme", readme_run),
            "unseen": lambda: zero_shot_runs("unseen", unseen_run),
            "synthetic": lambda: synthetic_runs(cfg, "untrained"),
            "joint": lambda: synthetic_runs(cfg, "joint")}
    for part, job in jobs.items():
        if part in args.parts:
            payload["runs"] += job()
            payload.update(table=table(payload["runs"]), wall_s=time.perf_counter() - start)
            if not args.no_write:  # after each part: a run stopped early keeps what it measured
                common.write_results(name, payload, args.quick)
    payload["complete"] = True
    if not args.no_write:
        common.write_results(name, payload, args.quick)
    common.log(report(payload["table"]))
    print(json.dumps({"benchmark": name, "wall_s": round(payload["wall_s"])}), flush=True)
    return payload


if __name__ == "__main__":
    main()
