"""Quality study: untrained RAG vs generator-only vs retriever-only vs joint training.

On the synthetic fictional-knowledge benchmark (held-out test split), with the embedded defaults
(all-MiniLM-L6-v2 question encoder, SmolLM2-135M-Instruct generator) over one shared
DocumentIndex of the corpus (passage embeddings fixed; only the question encoder trains):

  (a) untrained: `RAGSequence.from_defaults`, no training;
  (b) generator: `TrainConfig(train_mode="generator", generator_lora=True)`;
  (c) retriever: `TrainConfig(train_mode="retriever")` (full question encoder, generator frozen);
  (d) joint:     `TrainConfig(train_mode="joint", generator_lora=True)` (full question encoder + LoRA).

Same optimiser steps, same batches (seeded loader), same seed per condition; every condition starts
from fresh models: the embedded generator with the shipped reader adapter merged in (the library's
default), or the raw generator with `--no-reader` (how section 5 of RESULTS.md was measured).
Evaluation: `evaluate()` on the test split: exact match and F1 of generated answers (greedy,
`--decoding`, default "fast"), recall@1 and recall@K (K=5) of the gold passage, loss.

    python benchmarks/quality.py --quick
    python benchmarks/quality.py                 # three seeds
    python benchmarks/quality.py --quick --tag tau0.5 --temperature 0.5   # an investigation run
    python benchmarks/quality.py --no-reader --tag raw   # every condition from the raw generator
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
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONDITIONS = ("untrained", "generator", "retriever", "joint")
METRICS = ("exact_match", "f1", "recall@1", "recall@k", "mrr", "loss", "p_doc_max", "p_doc_gold",
           "train_prior_gold", "train_posterior_gold")


@dataclass
class QualityConfig:
    num_entities: int = 60  # full mode uses FULL (100); objectives.py builds on these defaults
    distractors_per_entity: int = 1
    data_seed: int = 0
    train_seeds: tuple = (0, 1, 2)
    conditions: tuple = CONDITIONS
    max_steps: int = 60
    batch_size: int = 2
    num_docs: int = 5
    temperature: Optional[float] = 1.0  # None: the library's default (0.05 for the embedded encoder)
    reader: bool = True  # start from the shipped reader adapter; False: the raw embedded generator
    learning_rate: float = 2e-4
    question_encoder_lr: float = 5e-5
    generator_lr: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    num_test: Optional[int] = None  # None: the whole test split
    decoding: str = "fast"
    max_new_tokens: int = 16
    eval_batch_size: int = 4
    diagnostic_train_questions: int = 24


QUICK = QualityConfig(num_entities=60, train_seeds=(0,), max_steps=20, num_test=12)
FULL = QualityConfig(num_entities=100, train_seeds=(0, 1, 2), max_steps=60, num_test=None)


def train_config(cfg: QualityConfig, condition: str, seed: int):
    from contextflow_core.config import TrainConfig

    generator = condition in ("generator", "joint")
    retriever = condition in ("retriever", "joint")
    return TrainConfig(
        num_epochs=1000, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        question_encoder_lr=cfg.question_encoder_lr if retriever else None,
        generator_lr=cfg.generator_lr if generator else None,
        train_mode=condition, generator_lora=generator, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, num_docs=cfg.num_docs, seed=seed,
        output_dir=None, resume=False, eval_on_epoch_end=False, save_on_epoch_end=False, log_every=1,
        progress=False, plot=False,
    )


def fresh_model(index, cfg: QualityConfig):
    from contextflow_core import RAGSequence
    from contextflow_core.config import RagConfig

    return RAGSequence.from_defaults(index, config=RagConfig(num_docs=cfg.num_docs, temperature=cfg.temperature),
                                     reader=cfg.reader)


def run_condition(condition: str, seed: int, index, data, test, cfg: QualityConfig) -> dict[str, Any]:
    from contextflow_core.training import make_dataloader, train_rag

    torch.manual_seed(seed)
    model = fresh_model(index, cfg)
    history, train_s = None, 0.0
    if condition != "untrained":
        loader = make_dataloader(data.train, batch_size=cfg.batch_size, shuffle=True, seed=seed)
        train_s, history = common.timed(lambda: train_rag(model, loader, None,
                                                          config=train_config(cfg, condition, seed)))
    return evaluate_run(condition, seed, model, data, test, cfg, history, train_s, cfg.decoding)


def evaluate_run(condition: str, seed: int, model, data, test, cfg: QualityConfig, history, train_s: float,
                 decoding: str) -> dict[str, Any]:
    """Test metrics, retriever diagnostics and the training-loss summary of one trained (or untrained) model."""
    from contextflow_core.evaluation import evaluate

    eval_s, metrics = common.timed(lambda: evaluate(
        model, test, batch_size=cfg.eval_batch_size, num_docs=cfg.num_docs, decoding=decoding,
        max_new_tokens=cfg.max_new_tokens))
    losses = [r["loss"] for r in history.train] if history is not None else []
    metrics.update(retriever_diagnostics(model, test, data.train[:cfg.diagnostic_train_questions], cfg))
    return {"condition": condition, "seed": seed, "metrics": metrics, "train_s": train_s, "eval_s": eval_s,
            "steps": history.global_step if history else 0, "train_loss": losses,
            "train_loss_first5": statistics.mean(losses[:5]) if losses else None,
            "train_loss_last5": statistics.mean(losses[-5:]) if losses else None}


def load_data(cfg: QualityConfig):
    """(synthetic dataset, test questions, DocumentIndex of the corpus with the embedded encoder)."""
    from contextflow_core.data import make_synthetic
    from contextflow_core.models.defaults import default_question_encoder
    from contextflow_core.retrieval import DocumentIndex

    data = make_synthetic(num_entities=cfg.num_entities, seed=cfg.data_seed,
                          distractors_per_entity=cfg.distractors_per_entity)
    test = data.test if cfg.num_test is None else data.test[:cfg.num_test]
    index = DocumentIndex.from_passages(data.passages, default_question_encoder(), show_progress=False)
    return data, test, index


@torch.no_grad()
def retriever_diagnostics(model, test, train_sample, cfg: QualityConfig) -> dict[str, float]:
    """How the retriever's distribution looks after training.

    On the test questions: mean max_k p(z_k|x) (1/K is uniform) and mean p(gold|x) (gold among the K).
    On a fixed sample of training questions: the prior p(gold|x) and the posterior p(gold|x,y) =
    softmax_k(log p(z_k|x) + log p(y|f(x,z_k))) that the marginal likelihood pulls the prior towards;
    a posterior below the prior means the generator's likelihood points away from the gold passage.
    """
    from contextflow_core.loss import posterior_doc_probs

    model.eval()
    doc_lp, retrieved = model.retrieve([e.question for e in test], cfg.num_docs)
    p = doc_lp.float().exp()
    out = {"p_doc_max": p.max(-1).values.mean().item(), "p_doc_gold": _gold_mass(p, retrieved.ids, test)}
    prior, posterior = [], []
    for i in range(0, len(train_sample), 8):
        rows = train_sample[i:i + 8]
        o = model(questions=[e.question for e in rows], answers=[e.answer for e in rows], num_docs=cfg.num_docs)
        ids = [[x.id for x in row] for row in o.passages]
        prior.append(_gold_mass(o.doc_logprobs.float().exp(), ids, rows, mean=False))
        posterior.append(_gold_mass(posterior_doc_probs(o.doc_logprobs, o.seq_logprobs), ids, rows, mean=False))
    out["train_prior_gold"] = statistics.mean(x for part in prior for x in part)
    out["train_posterior_gold"] = statistics.mean(x for part in posterior for x in part)
    return out


def _gold_mass(p: torch.Tensor, ids, examples, mean: bool = True):
    """Probability mass on gold passages per question whose gold is among the retrieved."""
    masses = [p[i, [pid in e.gold_ids for pid in row]].sum().item()
              for i, (e, row) in enumerate(zip(examples, ids)) if any(pid in e.gold_ids for pid in row)]
    if not mean:
        return masses
    return statistics.mean(masses) if masses else float("nan")


def aggregate(runs: list[dict[str, Any]], conditions) -> list[dict[str, Any]]:
    rows = []
    for c in conditions:
        mine = [r for r in runs if r["condition"] == c]
        if not mine:
            continue
        row = {"condition": c, "seeds": len(mine)}
        for m in METRICS:
            values = [r["metrics"][m] for r in mine]
            row[m] = statistics.mean(values)
            row[f"{m}_min"], row[f"{m}_max"] = min(values), max(values)
        row["train_loss_first5"] = _mean([r["train_loss_first5"] for r in mine])
        row["train_loss_last5"] = _mean([r["train_loss_last5"] for r in mine])
        row["train_s"] = statistics.mean(r["train_s"] for r in mine)
        rows.append(row)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def report(rows: list[dict[str, Any]], k: int) -> str:
    def cell(r, m):
        if r["seeds"] > 1:
            return f"{r[m]:.3f} ({r[m + '_min']:.3f}-{r[m + '_max']:.3f})"
        return f"{r[m]:.3f}"

    table = [{"condition": r["condition"], "seeds": r["seeds"], "exact match": cell(r, "exact_match"),
              "F1": cell(r, "f1"), "recall@1": cell(r, "recall@1"), f"recall@{k}": cell(r, "recall@k"),
              "MRR": cell(r, "mrr"), "test loss": cell(r, "loss"), "test p(gold|x)": cell(r, "p_doc_gold"),
              "train p(gold|x) -> p(gold|x,y)": f"{r['train_prior_gold']:.3f} -> {r['train_posterior_gold']:.3f}",
              "train loss first5 -> last5": ("-" if r["train_loss_first5"] is None else
                                             f"{r['train_loss_first5']:.3f} -> {r['train_loss_last5']:.3f}"),
              "train s": round(r["train_s"], 1)} for r in rows]
    return common.markdown_table(table)


def plot(payload: dict[str, Any], path: Path) -> None:
    """Exact match and recall@1 per condition: bars at the mean over seeds, one dot per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg, runs = payload["config"], payload["runs"]
    conditions = [c for c in cfg["conditions"] if any(r["condition"] == c for r in runs)]
    fig = Figure(figsize=(9, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    colors = {"untrained": "0.6", "generator": "C1", "retriever": "C2", "joint": "C0"}
    for i, (metric, label) in enumerate((("exact_match", "exact match"), ("recall@1", "recall@1"),
                                         ("mrr", "MRR"))):
        ax = fig.add_subplot(1, 3, i + 1)
        for j, c in enumerate(conditions):
            values = [r["metrics"][metric] for r in runs if r["condition"] == c]
            ax.bar(j, statistics.mean(values), 0.7, color=colors.get(c, "C3"))
            ax.plot([j] * len(values), values, "k.", ms=5)
            ax.text(j, max(values) + 0.02, f"{statistics.mean(values):.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(conditions)))
        ax.set_xticklabels(conditions, fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    seeds = len(cfg["train_seeds"])
    fig.suptitle(f"Synthetic test split ({payload['num_test']} questions): {cfg['max_steps']} steps, batch "
                 f"{cfg['batch_size']}, K={cfg['num_docs']}, temperature {cfg['temperature']}, "
                 f"{seeds} seed{'s' if seeds > 1 else ''} (dots)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~4 min: 60 entities, 20 steps, 12 test questions, one seed")
    ap.add_argument("--entities", type=int, help="synthetic entities (corpus and question count grow with it)")
    ap.add_argument("--tag", default="", help="results file suffix for investigation runs")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--question-encoder-lr", type=float)
    ap.add_argument("--generator-lr", type=float)
    ap.add_argument("--num-docs", type=int)
    ap.add_argument("--num-test", type=int)
    ap.add_argument("--decoding", choices=("thorough", "fast", "concat"))
    ap.add_argument("--no-reader", dest="reader", action="store_false", default=None,
                    help="start every condition from the raw embedded generator, not the reader adapter")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from the saved JSON, train nothing")
    args = ap.parse_args(argv)
    name = "quality" + (f"_{args.tag}" if args.tag else "")
    if args.replot:
        payload = json.loads(common.results_path(name, args.quick, "json").read_text())
        plot(payload, common.results_path(name, args.quick, "png"))
        return payload
    cfg = QUICK if args.quick else FULL
    overrides = {"train_seeds": tuple(args.seeds) if args.seeds else None, "max_steps": args.steps,
                 "conditions": tuple(args.conditions) if args.conditions else None,
                 "temperature": args.temperature, "question_encoder_lr": args.question_encoder_lr,
                 "generator_lr": args.generator_lr, "num_docs": args.num_docs, "num_test": args.num_test,
                 "decoding": args.decoding, "num_entities": args.entities, "reader": args.reader}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    env = common.header(name, dataclasses.asdict(cfg))
    start = time.perf_counter()

    data, test, index = load_data(cfg)
    common.log(f"# corpus {len(data.passages)} passages, {len(data.train)} train / {len(test)} test questions; "
               f"index built in {time.perf_counter() - start:.1f}s")
    runs = []
    for condition in cfg.conditions:
        seeds = cfg.train_seeds[:1] if condition == "untrained" else cfg.train_seeds  # untrained: deterministic
        for seed in seeds:
            r = run_condition(condition, seed, index, data, test, cfg)
            runs.append(r)
            common.log(f"  {condition:<10} seed={seed} train {r['train_s']:.0f}s eval {r['eval_s']:.0f}s  " +
                       " ".join(f"{m}={r['metrics'][m]:.3f}" for m in METRICS) +
                       (f"  train loss {r['train_loss_first5']:.3f} -> {r['train_loss_last5']:.3f}"
                        if r["train_loss"] else ""))
    rows = aggregate(runs, cfg.conditions)
    common.log(report(rows, cfg.num_docs))
    payload = {"env": env, "config": dataclasses.asdict(cfg), "num_train": len(data.train), "num_test": len(test),
               "num_passages": len(data.passages), "table": rows, "runs": runs,
               "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results(name, payload, args.quick)
        plot(payload, common.results_path(name, args.quick, "png"))
    print(json.dumps({"benchmark": name, "table": [{k: (round(v, 3) if isinstance(v, float) else v)
                                                    for k, v in r.items() if "_m" not in k}
                                                   for r in rows], "wall_s": round(payload["wall_s"])}), flush=True)
    return payload


if __name__ == "__main__":
    main()
