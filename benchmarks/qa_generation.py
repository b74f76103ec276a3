"""QA-generation study: does training on generated questions recover the gain of training on real ones?

On the synthetic fictional-knowledge benchmark, the question writers see the PASSAGES ONLY (every
passage of the corpus, distractors included; no questions, no metadata). `generate_qa` (extractive
mode: an answer span is picked by rules, the writer asks for it) turns them into training pairs whose
gold passage is the passage they came from. Four conditions, evaluated on the held-out test split
(questions worded by the benchmark's human-style templates, unseen by every writer):

  (1) untrained:  `RAGSequence.from_defaults`, no training;
  (2) ceiling:    joint training on the benchmark's own train questions;
  (3) embedded:   joint training on pairs written by the embedded SmolLM2-135M (`EmbeddedQuestionWriter`);
  (4) cloze:      joint training on pairs written by the rule-based `ClozeWriter` (the no-LLM floor).

Training as in quality.py's "joint" condition (full question encoder + generator LoRA, same steps,
batch and seed per condition). Reported: exact match, F1, recall@1, MRR; for each writer the pairs
kept and dropped by each filter, the share of kept questions naming the passage's entity, writer
throughput (prompts/s and kept pairs/s, measured on the run that called the writer, not a cached
rerun), and sample replies. Replies are cached (JSONL, `generate_qa(cache=...)`) under
`$CONTEXTFLOW_CACHE/qa_study/`, so an interrupted run resumes and a rerun writes nothing new.

    python benchmarks/qa_generation.py --quick     # ~15 min on 2 loaded CPU cores
    python benchmarks/qa_generation.py             # three seeds, 100 entities (hours on CPU)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import quality

CONDITIONS = ("untrained", "ceiling", "embedded", "cloze")
WRITER_OF = {"embedded": "embedded", "cloze": "cloze"}
METRICS = ("exact_match", "f1", "recall@1", "mrr")


@dataclass
class StudyConfig:
    num_entities: int = 100
    distractors_per_entity: int = 1
    data_seed: int = 0
    train_seeds: tuple = (0, 1, 2)
    conditions: tuple = CONDITIONS
    max_steps: int = 60
    batch_size: int = 2
    num_docs: int = 5
    num_test: int | None = None  # None: the whole test split
    embedded_sample: int | None = None  # passages the embedded writer writes for (None: all)
    questions_per_passage: int = 1
    writer_batch_size: int = 8
    writer_max_new_tokens: int = 32
    writer_reader: bool = False  # the raw instruct model writes questions (see RESULTS.md: variants)
    gen_seed: int = 0


QUICK = StudyConfig(num_entities=40, train_seeds=(0,), max_steps=20, num_test=None, embedded_sample=16)
FULL = StudyConfig()


def quality_config(cfg: StudyConfig) -> quality.QualityConfig:
    """The training/eval settings of quality.py's joint condition, with this study's sizes."""
    return dataclasses.replace(quality.FULL, num_entities=cfg.num_entities, data_seed=cfg.data_seed,
                               distractors_per_entity=cfg.distractors_per_entity, max_steps=cfg.max_steps,
                               batch_size=cfg.batch_size, num_docs=cfg.num_docs, num_test=cfg.num_test,
                               train_seeds=cfg.train_seeds)


def make_writer(name: str, cfg: StudyConfig):
    from contextflow_core.data.qa_prompts import ClozeWriter, EmbeddedQuestionWriter

    if name == "cloze":
        return ClozeWriter()
    return EmbeddedQuestionWriter(reader=cfg.writer_reader, max_new_tokens=cfg.writer_max_new_tokens,
                                  batch_size=cfg.writer_batch_size)


def cache_path(name: str, cfg: StudyConfig) -> Path:
    from contextflow_core.models.defaults import cache_root

    folder = cache_root() / "qa_study"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}_e{cfg.num_entities}_d{cfg.data_seed}_s{cfg.gen_seed}.jsonl"


def generate(name: str, data, cfg: StudyConfig) -> dict[str, Any]:
    """Runs `generate_qa` with one writer over the corpus; returns the pairs and what to report."""
    from contextflow_core.data import generate_qa

    sample = cfg.embedded_sample if name == "embedded" else None
    path = cache_path(name, cfg)
    result = generate_qa(data.passages, make_writer(name, cfg), num_questions_per_passage=cfg.questions_per_passage,
                         sample=sample, seed=cfg.gen_seed, cache=str(path), batch_size=cfg.writer_batch_size,
                         progress=False)
    report = result.report.to_dict()
    titles = {p.id: p.title for p in data.passages}
    names_entity = [titles[e.gold_ids[0]].lower() in e.question.lower() for e in result.examples]
    report.update({
        "kept_naming_entity": sum(names_entity),
        "prompts_per_s": (report["writer_calls"] / max(report["writer_seconds"], 1e-9)
                          if report["writer_calls"] else None),
        "kept_pairs_per_s_fresh": (report["kept"] / report["seconds"]
                                   if report["writer_calls"] == report["prompts"] else None),
        "examples_kept": [{"passage": titles[e.gold_ids[0]], "question": e.question, "answer": e.answer}
                          for e in result.examples[:12]],
        "replies": sample_replies(path, data, 12),
    })
    return {"examples": result.examples, "report": report}


def sample_replies(path: Path, data, n: int) -> list[dict[str, str]]:
    """The first `n` raw replies in the cache file, beside their passage (what the writer wrote)."""
    texts = {p.id: p.text for p in data.passages}
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in list(f)[1:n + 1]:
            record = json.loads(line)
            rows.append({"passage": texts.get(record.get("passage_id"), "?"), "reply": record.get("reply")})
    return rows


NAIVE_TEMPLATE = "Write one question that this passage answers.\n\nPassage: {passage}\nQuestion:"
ZERO_SHOT_TEMPLATE = ("Passage: {passage}\nWrite one question about {title} whose answer is \"{answer}\". "
                      "Do not include the answer in the question.\nQuestion:")
VARIANTS = {  # name -> (template or None for the default, EmbeddedQuestionWriter kwargs; None: ClozeWriter)
    "naive (no answer given)": (NAIVE_TEMPLATE, {}),
    "answer-aware zero-shot": (ZERO_SHOT_TEMPLATE, {}),
    "answer-aware few-shot (default)": (None, {}),
    "answer-aware few-shot, no chat template": (None, {"chat": False}),
    "answer-aware few-shot, reader merged": (None, {"reader": True}),
    "cloze (rules)": (None, None),
}


def usable(question: str | None, answer: str, title: str) -> bool:
    """Parseable, ends with '?', does not contain the answer, names the passage's entity."""
    return bool(question) and question.endswith("?") and answer.lower() not in question.lower() \
        and title.lower() in question.lower()


def prompt_variants(data, n: int, seed: int = 0) -> dict[str, Any]:
    """Usable rate of each prompt variant on `n` gold passages drawn at random (one answer span each)."""
    import random

    from contextflow_core.data.qa_prompts import (
        DEFAULT_QUESTION_TEMPLATE,
        ClozeWriter,
        EmbeddedQuestionWriter,
        parse_question,
        pick_answers,
    )

    gold = random.Random(seed).sample([p for p in data.passages if not p.metadata["distractor"]], n)
    answers = [pick_answers(p.text, 1, random.Random(i), title=p.title)[0] for i, p in enumerate(gold)]
    out = {}
    for name, (template, kwargs) in VARIANTS.items():
        template = template or DEFAULT_QUESTION_TEMPLATE
        writer = ClozeWriter() if kwargs is None else EmbeddedQuestionWriter(max_new_tokens=32, **kwargs)
        prompts = [template.format(title=p.title, passage=p.text, answer=a) for p, a in zip(gold, answers)]
        seconds, replies = common.timed(lambda w=writer, ps=prompts: w.batch(ps))
        questions = [parse_question(r) for r in replies]
        # the naive prompt names no answer: judge it against the passage's own fact
        targets = answers if "{answer}" in template else [p.metadata["value"] for p in gold]
        ok = [usable(q, a, p.title) for q, a, p in zip(questions, targets, gold)]
        out[name] = {"usable": sum(ok), "n": n, "rate": sum(ok) / n, "parsed": sum(q is not None for q in questions),
                     "seconds": seconds, "examples": [
                         {"passage": p.text, "answer": a, "reply": r, "usable": u}
                         for p, a, r, u in zip(gold, targets, replies, ok)]}
        common.log(f"  variant {name}: {sum(ok)}/{n} usable ({seconds:.0f}s)")
    return out


def run_condition(condition: str, seed: int, train, index, test, qcfg) -> dict[str, Any]:
    from contextflow_core.evaluation import evaluate
    from contextflow_core.training import make_dataloader, train_rag

    torch.manual_seed(seed)
    model = quality.fresh_model(index, qcfg)
    train_s, losses = 0.0, []
    if condition != "untrained":
        loader = make_dataloader(train, batch_size=qcfg.batch_size, shuffle=True, seed=seed)
        train_s, history = common.timed(lambda: train_rag(model, loader, None,
                                                          config=quality.train_config(qcfg, "joint", seed)))
        losses = [r["loss"] for r in history.train]
    eval_s, metrics = common.timed(lambda: evaluate(model, test, batch_size=qcfg.eval_batch_size,
                                                    num_docs=qcfg.num_docs, decoding=qcfg.decoding,
                                                    max_new_tokens=qcfg.max_new_tokens))
    return {"condition": condition, "seed": seed, "metrics": metrics, "train_s": train_s, "eval_s": eval_s,
            "num_train": len(train), "train_loss_first5": statistics.mean(losses[:5]) if losses else None,
            "train_loss_last5": statistics.mean(losses[-5:]) if losses else None}


def aggregate(runs: list[dict[str, Any]], conditions) -> list[dict[str, Any]]:
    rows = []
    for c in conditions:
        mine = [r for r in runs if r["condition"] == c]
        if not mine:
            continue
        row: dict[str, Any] = {"condition": c, "seeds": len(mine), "num_train": mine[0]["num_train"]}
        for m in METRICS:
            values = [r["metrics"][m] for r in mine]
            row[m], row[f"{m}_min"], row[f"{m}_max"] = statistics.mean(values), min(values), max(values)
        rows.append(row)
    return rows


def recovery(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of the ceiling's EM gain over untrained that each writer's training recovers."""
    by = {r["condition"]: r for r in rows}
    if "untrained" not in by or "ceiling" not in by:
        return {}
    base, gain = by["untrained"], by["ceiling"]["exact_match"] - by["untrained"]["exact_match"]
    out = {"ceiling_em_gain": gain}
    for c in ("embedded", "cloze"):
        if c in by:
            out[c] = {"em_gain": by[c]["exact_match"] - base["exact_match"],
                      "recovered": (by[c]["exact_match"] - base["exact_match"]) / gain if gain > 0 else None,
                      "recall@1_change": by[c]["recall@1"] - base["recall@1"]}
    return out


def report_table(rows: list[dict[str, Any]]) -> str:
    def cell(r, m):
        return f"{r[m]:.3f}" + (f" ({r[m + '_min']:.3f}-{r[m + '_max']:.3f})" if r["seeds"] > 1 else "")

    return common.markdown_table([{"condition": r["condition"], "train pairs": r["num_train"], "seeds": r["seeds"],
                                   "exact match": cell(r, "exact_match"), "F1": cell(r, "f1"),
                                   "recall@1": cell(r, "recall@1"), "MRR": cell(r, "mrr")} for r in rows])


def writer_table(writers: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, rep in writers.items():
        row = {"writer": name, "passages": rep["sampled"], "prompts": rep["prompts"], "kept": rep["kept"],
               "kept naming entity": rep["kept_naming_entity"]}
        row.update({k.replace("_", " "): v for k, v in rep["skipped"].items() if v})
        row["prompts/s"] = "-" if rep["prompts_per_s"] is None else f"{rep['prompts_per_s']:.2f}"
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return common.markdown_table([{k: r.get(k, 0) for k in keys} for r in rows])


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 entities, 20 steps, one seed, embedded writer on 16 passages")
    ap.add_argument("--entities", type=int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS)
    ap.add_argument("--embedded-sample", type=int, help="passages the embedded writer writes for")
    ap.add_argument("--writer-reader", action="store_true", help="write with the reader-merged generator")
    ap.add_argument("--variants", type=int, metavar="N", help="prompt-variant study on N gold passages only "
                    "(writes qa_generation_variants[_quick].json), no training")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    overrides = {"num_entities": args.entities, "train_seeds": tuple(args.seeds) if args.seeds else None,
                 "max_steps": args.steps, "conditions": tuple(args.conditions) if args.conditions else None,
                 "embedded_sample": args.embedded_sample, "writer_reader": args.writer_reader or None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    name = "qa_generation" + ("_variants" if args.variants else "") + (f"_{args.tag}" if args.tag else "")
    env = common.header(name, dataclasses.asdict(cfg))
    start = time.perf_counter()
    qcfg = quality_config(cfg)
    if args.variants:
        return variants_main(name, env, cfg, args)
    data, test, index = quality.load_data(qcfg)
    common.log(f"# corpus {len(data.passages)} passages, {len(data.train)} train / {len(test)} test questions")
    train_sets: dict[str, Any] = {"untrained": [], "ceiling": data.train}
    writers: dict[str, dict[str, Any]] = {}
    for condition in cfg.conditions:
        if condition in WRITER_OF:
            generated = generate(WRITER_OF[condition], data, cfg)
            train_sets[condition], writers[condition] = generated["examples"], generated["report"]
            common.log(f"  writer {condition}: {writers[condition]['kept']} pairs kept of "
                       f"{writers[condition]['prompts']} prompts in {writers[condition]['seconds']:.0f}s")
    runs = []
    for condition in cfg.conditions:
        for seed in (cfg.train_seeds[:1] if condition == "untrained" else cfg.train_seeds):
            r = run_condition(condition, seed, train_sets[condition], index, test, qcfg)
            runs.append(r)
            common.log(f"  {condition:<10} seed={seed} train {r['train_s']:.0f}s  " +
                       " ".join(f"{m}={r['metrics'][m]:.3f}" for m in METRICS))
    rows = aggregate(runs, cfg.conditions)
    common.log(report_table(rows))
    common.log(writer_table(writers))
    payload = {"env": env, "config": dataclasses.asdict(cfg), "num_passages": len(data.passages),
               "num_train": len(data.train), "num_test": len(test), "table": rows, "recovery": recovery(rows),
               "writers": writers, "runs": runs, "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results(name, payload, args.quick)
    print(json.dumps({"benchmark": name, "recovery": payload["recovery"], "wall_s": round(payload["wall_s"])}),
          flush=True)
    return payload


def variants_main(name: str, env: dict[str, Any], cfg: StudyConfig, args) -> dict[str, Any]:
    from contextflow_core.data import make_synthetic

    start = time.perf_counter()
    data = make_synthetic(num_entities=cfg.num_entities, seed=cfg.data_seed,
                          distractors_per_entity=cfg.distractors_per_entity)
    variants = prompt_variants(data, args.variants)
    common.log(common.markdown_table([{"variant": k, "usable": f"{v['usable']}/{v['n']}", "parsed": v["parsed"],
                                       "s": round(v["seconds"])} for k, v in variants.items()]))
    payload = {"env": env, "config": dataclasses.asdict(cfg), "variants": variants,
               "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results(name, payload, args.quick)
    return payload


if __name__ == "__main__":
    main()
