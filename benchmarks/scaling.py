"""Scaling of one training step with K (passages per question) and with the vocabulary size.

Same variants and measurement as `train_step.py` (B=2, synthetic-corpus questions with their
retrieved top-K passages, real answers):

1. K in (1, 2, 5, 10, 20) on the embedded SmolLM2-135M (49,152-token vocabulary); step time and
   peak memory are expected to grow linearly in K (B*K sequences per step).
2. The same K grid on a random-init generator with SmolLM2's shapes but a 262,144-token vocabulary
   (SmolLM2's tokenizer for the text: its ids are valid there). ContextFlow's LM-head memory stays
   bounded by the answer length (logits at T+1 positions, or none with "hidden"); plain HF's grows
   with the prompt length and the naive design's with 512 x V.

Before each (variant, K, vocabulary) point the peak memory is estimated (see `estimate_bytes`); a
point whose estimate exceeds the memory budget is skipped and reported as skipped, with its estimate.
Writes scaling[_quick].json and two plots: scaling_k[_quick].png (time and memory vs K) and
scaling_vocab[_quick].png (LM-head memory vs vocabulary at K=5 / the largest K run).

    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train_step as ts  # noqa: E402

VOCABS = {"smollm2_49k": None, "random_262k": 262_144}


@dataclass
class ScalingConfig:
    batch_size: int = 2
    ks: tuple = (1, 2, 5, 10, 20)
    ks_262k: tuple = (1, 5, 20)
    variants: tuple = ts.VARIANTS
    naive_max_k: int = 5  # time: the naive step at K=5 already takes minutes on 2 CPU cores
    rounds: int = 3  # timed steps per point (all points interleaved, order rotated per round)
    warmup: int = 1  # untimed steps per point, each under PeakMemory
    memory_budget_gib: float = 12.0  # skip a point whose estimated peak exceeds this
    num_entities: int = 200
    seed: int = 0
    naive_length: int = 512
    estimate: str = ("upper bound: 4*P + 8*V*H + N*L_body*(1.25 MiB + 4*heads*layers*L_body) + "
                     "head_factor*N*L_head*V*4 (see estimate_bytes)")


# A deliberately conservative (upper-bound) estimate, calibrated on train_step's CPU run (SmolLM2-135M,
# float32, B=2, K=5) and this script's runs (the per-token term measured up to 1.22 MiB at K=20):
#   4*P                      parameter gradients (all weights train)
#   + 2 * 4*V*H              transient vocabulary-matrix gradients (tied embedding + LM head, summed)
#   + tokens * (1.25 MiB + 4*heads*layers*L)   activations kept for backward (the last term: attention
#                            probabilities of SDPA's math path, which the masked CPU path uses)
#   + head_factor * N*L_head*V*4   LM-head tensors alive at once (logits, log-softmax, their grads)
BODY_BYTES_PER_TOKEN = 1.25 * common.MB
HEAD_FACTOR = {"naive_pad512": 3.0, "plain_hf_labels": 3.5, "contextflow_logits_to_keep": 4.0,
               "contextflow_hidden": 1.0}


def estimate_bytes(variant: str, n_seq: int, length: int, answer: int, vocab: int, params: int, config,
                   naive_length: int = 512) -> float:
    """Estimated (upper-bound) peak bytes of one step (see the comment above)."""
    body_len = naive_length if variant == "naive_pad512" else length
    head_len = {"naive_pad512": naive_length, "plain_hf_labels": length}.get(variant, answer + 1)
    if variant == "contextflow_hidden":
        head_len = min(answer * n_seq, 1024) / n_seq  # one chunk of <= 1024 rows of logits at a time
    attention = 4 * config.num_attention_heads * config.num_hidden_layers * body_len
    return (4 * params + 8 * vocab * config.hidden_size + n_seq * body_len * (BODY_BYTES_PER_TOKEN + attention)
            + HEAD_FACTOR[variant] * n_seq * head_len * vocab * 4)


def make_generator(vocab: Optional[int], base_model, seed: int):
    """The embedded SmolLM2 (vocab None), or a random-init copy of its architecture with `vocab` tokens."""
    if vocab is None:
        return base_model
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(base_model.config)
    config.vocab_size = vocab
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = copy.deepcopy(base_model.generation_config)
    return model


def measure_grid(ctx, grid: dict[int, list], run: dict[int, list[str]], cfg: ScalingConfig,
                 say=common.log) -> dict[int, dict[str, Any]]:
    """Every (K, variant) point of one generator, interleaved so load drift hits them alike.

    Warm-up: `cfg.warmup` untimed steps per point under `PeakMemory`. Timed: `cfg.rounds` rounds,
    each running every point once, in an order rotated per round.
    """
    steps = ts.steps_for(ctx)
    keys = [(k, v) for k in grid for v in run[k]]
    memory = {key: {"peak_bytes": [], "retained_bytes": [], "cuda_peak_bytes": []} for key in keys}
    times = {key: [] for key in keys}
    checks: dict[int, dict[str, Any]] = {k: {} for k in grid}
    for i in range(cfg.warmup):
        for k, v in ts._rotated(keys, i):
            ts._fresh(ctx.model)
            with common.PeakMemory() as mem:
                checks[k][v] = steps[v](grid[k][i % len(grid[k])])
            memory[(k, v)]["peak_bytes"].append(mem.peak)
            memory[(k, v)]["retained_bytes"].append(mem.retained)
    for r in range(cfg.rounds):
        for k, v in ts._rotated(keys, r * max(1, len(keys) // cfg.rounds)):
            ts._fresh(ctx.model)
            t, _ = common.timed(lambda: steps[v](grid[k][r % len(grid[k])]))
            times[(k, v)].append(t)
        say(f"  round {r + 1}/{cfg.rounds} done (load average {common._loadavg()})")
    out = {}
    for k in grid:
        raw = {"times_s": {v: times[(k, v)] for v in run[k]}, "memory": {v: memory[(k, v)] for v in run[k]},
               "agreement": ts.agreement(checks[k])}
        out[k] = {"summary": ts.summarize(raw, run[k]) if run[k] else {"per_variant": {}, "ratios": {}},
                  "agreement": raw["agreement"], "raw": raw}
    ts._fresh(ctx.model)
    return out


def plan(cfg: ScalingConfig, k: int, shapes: dict[str, Any], V: int, params: int, config) -> tuple[list, dict, dict]:
    """Which variants run at this point, which are skipped (and why), and every estimate (MiB)."""
    n, length = shapes["sequences_per_step"], int(shapes["padded_length_dynamic"]["max"])
    answer = int(shapes["answer_tokens_with_eos"]["max"])
    budget = cfg.memory_budget_gib * 1024 ** 3
    estimates = {v: estimate_bytes(v, n, length, answer, V, params, config, cfg.naive_length) for v in cfg.variants}
    run, skipped = [], {}
    for v in cfg.variants:
        est = estimates[v]
        if v == "naive_pad512" and k > cfg.naive_max_k:
            skipped[v] = {"reason": f"K > naive_max_k={cfg.naive_max_k} (time)", "estimate_MiB": est / common.MB}
        elif est > budget:
            skipped[v] = {"reason": f"estimated peak {est / 2**30:.1f} GiB > budget {cfg.memory_budget_gib} GiB",
                          "estimate_MiB": est / common.MB}
        else:
            run.append(v)
    return run, skipped, {v: e / common.MB for v, e in estimates.items()}


def sweep(cfg: ScalingConfig, say=common.log) -> list[dict[str, Any]]:
    from contextflow_core.models.defaults import default_generator

    mods = ts.contextflow_modules(gpu_safe=False)
    smol, tokenizer = default_generator()
    builder = mods["prompts"].PromptBuilder(tokenizer)
    corpus = ts.load_corpus(cfg.num_entities, cfg.seed)
    points = []
    for vocab_name, vocab in VOCABS.items():
        model = make_generator(vocab, smol, cfg.seed)
        model.train()
        ctx = ts.Ctx(model, builder, mods, "cpu", cfg.naive_length)
        params, V = sum(p.numel() for p in model.parameters()), model.config.vocab_size
        grid, run, info = {}, {}, {}
        for k in (cfg.ks if vocab is None else cfg.ks_262k):
            grid[k] = ts.corpus_batches(corpus, cfg.batch_size, k, max(cfg.warmup, cfg.rounds, 1), cfg.seed)
            shapes = ts.batch_shapes(ctx, grid[k])
            run[k], skipped, estimates = plan(cfg, k, shapes, V, params, model.config)
            info[k] = {"vocab": vocab_name, "vocab_size": V, "params": params, "K": k,
                       "N": shapes["sequences_per_step"], "padded_length": int(shapes["padded_length_dynamic"]["max"]),
                       "answer_tokens_max": int(shapes["answer_tokens_with_eos"]["max"]), "ran": run[k],
                       "skipped": skipped, "estimate_MiB": estimates}
        say(f"# {vocab_name}: {sum(len(r) for r in run.values())} points, interleaved")
        start = time.perf_counter()
        measured = measure_grid(ctx, grid, run, cfg, say)
        for k in grid:
            point = {**info[k], **measured[k], "wall_s_all_points": time.perf_counter() - start}
            points.append(point)
            per = point["summary"]["per_variant"]
            say(f"  {vocab_name} K={k:<2} N={point['N']:<3} L={point['padded_length']:<3} " + "  ".join(
                f"{v}: {per[v]['time_s']['median']:.2f}s {per[v]['peak_MiB']['median']:.0f}MiB "
                f"(est {point['estimate_MiB'][v]:.0f})" for v in run[k]) +
                ("  skipped: " + ", ".join(f"{v} (est {s['estimate_MiB']:.0f} MiB)"
                                           for v, s in point["skipped"].items()) if point["skipped"] else ""))
        del ctx, model
        gc.collect()
    return points


# ----------------------------------------------------------------------------- plots and tables
STYLE = {"contextflow_logits_to_keep": ("C0", "o"), "contextflow_hidden": ("C2", "s"),
         "naive_pad512": ("C3", "x"), "plain_hf_labels": ("C1", "^")}


def _series(points, vocab: str, variant: str, key: str):
    """(K, value) of one variant: the minimum over rounds for time (the least-disturbed step on a
    shared machine), the median for memory (it does not depend on load)."""
    stat = "min" if key == "time_s" else "median"
    xs, ys = [], []
    for p in points:
        if p["vocab"] == vocab and variant in p["ran"]:
            xs.append(p["K"])
            ys.append(p["summary"]["per_variant"][variant][key][stat])
    return xs, ys


def plot_k(points, variants, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2, i) for i in (1, 2)]
    for vocab, ls in (("smollm2_49k", "-"), ("random_262k", "--")):
        for v in variants:
            color, marker = STYLE[v]
            for ax, key, scale in ((axes[0], "time_s", 1.0), (axes[1], "peak_MiB", 1 / 1024)):
                xs, ys = _series(points, vocab, v, key)
                if xs:
                    ax.plot(xs, [y * scale for y in ys], ls, color=color, marker=marker,
                            label=f"{v} ({'49k' if vocab == 'smollm2_49k' else '262k'} vocab)")
    axes[0].set_ylabel("step time, s (minimum over rounds)")
    axes[1].set_ylabel("peak memory during the step, GiB")
    for ax in axes:
        ax.set_xlabel("K (passages per question), B = 2")
        ax.set_xticks(sorted({p["K"] for p in points}))  # linear axis: linear in K shows as a straight line
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6.5, loc="upper left")
    fig.suptitle("Training step (fwd+bwd) vs K on 2 CPU cores: SmolLM2-135M (solid), random-init 262k vocab (dashed)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plain_ticks(axis) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_vocab(points, variants, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    common_k = [k for k in sorted({p["K"] for p in points})
                if all(any(q["K"] == k and q["vocab"] == vn for q in points) for vn in VOCABS)]
    k = 5 if 5 in common_k else max(common_k)
    fig = Figure(figsize=(8, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(variants)
    labelled = set()

    def label(text):
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for i, v in enumerate(variants):
        color, _ = STYLE[v]
        for j, vocab in enumerate(VOCABS):
            p = next(q for q in points if q["K"] == k and q["vocab"] == vocab)
            x = j + (i - (len(variants) - 1) / 2) * width
            if v in p["ran"]:
                y = p["summary"]["per_variant"][v]["peak_MiB"]["median"] / 1024
                ax.bar(x, y, width, color=color, label=label(v))
                ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
            else:
                y = p["estimate_MiB"][v] / 1024
                ax.bar(x, y, width, color="none", edgecolor=color, hatch="//", label=label(f"{v} (estimate, not run)"))
                ax.text(x, y, f"~{y:.0f}\nest.", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(VOCABS)))
    ax.set_xticklabels(["SmolLM2-135M\n49,152 vocab", "random-init, same shapes\n262,144 vocab"])
    ax.set_ylabel("peak memory during the step, GiB")
    ax.set_title(f"Peak memory vs vocabulary size, B=2, K={k}", fontsize=9)
    ax.set_yscale("log")
    top = ax.get_ylim()[1]
    ax.set_ylim(0.5, top)
    ax.set_yticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if t <= top])
    _plain_ticks(ax.yaxis)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, format="png")


def table(points) -> str:
    rows = []
    for p in points:
        for v in p["ran"]:
            s = p["summary"]["per_variant"][v]
            rows.append({"vocab": p["vocab_size"], "K": p["K"], "N=B*K": p["N"], "L": p["padded_length"],
                         "variant": v, "time s (min)": round(s["time_s"]["min"], 2),
                         "time s (median)": round(s["time_s"]["median"], 2), "max s": round(s["time_s"]["max"], 2),
                         "peak MiB": round(s["peak_MiB"]["median"]),
                         "estimate MiB": round(p["estimate_MiB"][v])})
        for v, sk in p["skipped"].items():
            rows.append({"vocab": p["vocab_size"], "K": p["K"], "N=B*K": p["N"], "L": p["padded_length"],
                         "variant": v, "time s (min)": "skipped", "time s (median)": sk["reason"], "max s": "",
                         "peak MiB": "-",
                         "estimate MiB": round(sk["estimate_MiB"])})
    return common.markdown_table(rows)


def linearity(points, variants) -> dict[str, Any]:
    """Least-squares slope and intercept of time (min over rounds) and memory against K, and R^2."""
    out = {}
    for vocab in VOCABS:
        for v in variants:
            for key in ("time_s", "peak_MiB"):
                xs, ys = _series(points, vocab, v, key)
                if len(xs) < 3:
                    continue
                mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
                sxx = sum((x - mx) ** 2 for x in xs)
                slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
                icpt = my - slope * mx
                ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in zip(xs, ys))
                ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
                out[f"{vocab}/{v}/{key}"] = {"slope_per_K": slope, "intercept": icpt, "r2": 1 - ss_res / ss_tot}
    return out


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-budget-gib", type=float)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--replot", action="store_true", help="redraw the PNGs from the saved JSON, measure nothing")
    args = ap.parse_args(argv)
    if args.replot:
        payload = json.loads(common.results_path("scaling", args.quick, "json").read_text())
        for name, fn in (("scaling_k", plot_k), ("scaling_vocab", plot_vocab)):
            fn(payload["points"], payload["config"]["variants"], common.results_path(name, args.quick, "png"))
        return payload
    if args.quick:
        cfg = ScalingConfig(ks=(1, 2, 5), ks_262k=(1, 5), naive_max_k=1, rounds=1, num_entities=60,
                            variants=("contextflow_logits_to_keep", "contextflow_hidden", "naive_pad512",
                                      "plain_hf_labels"))
    else:
        cfg = ScalingConfig()
    if args.memory_budget_gib:
        cfg = dataclasses.replace(cfg, memory_budget_gib=args.memory_budget_gib)
    env = common.header("scaling", dataclasses.asdict(cfg))
    start = time.perf_counter()
    points = sweep(cfg)
    common.log(table(points))
    fit = linearity(points, cfg.variants)
    common.log("linear fits: " + json.dumps({k: {q: round(x, 4) for q, x in v.items()} for k, v in fit.items()}))
    payload = {"env": env, "config": dataclasses.asdict(cfg), "points": points, "linear_fit": fit,
               "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results("scaling", payload, args.quick)
        for name, fn in (("scaling_k", plot_k), ("scaling_vocab", plot_vocab)):
            path = common.results_path(name, args.quick, "png")
            fn(points, cfg.variants, path)
            common.log(f"# wrote {path.relative_to(common.ROOT)}")
    return payload


if __name__ == "__main__":
    main()
