"""Serving: N concurrent callers through a `RequestBatcher` against the same questions answered one by one.

RAGSequence.from_defaults (MiniLM + SmolLM2-135M-Instruct with the reader) over the synthetic
corpus, K=4, greedy, at most 16 new tokens, decoding "fast" (``--decoding`` to change). Paths,
measured side by side on each chunk of `callers` questions in turn (so load changes on a shared
machine hit every path alike), after one untimed warm-up call each:

- `sequential`: one caller, `rag.generate(questions=[q])` per question, one after another (what
  N concurrent callers got before issue 17: they took turns on the model's lock);
- `natural`: N threads each submit one question at once to `RequestBatcher(rag, max_wait_ms=0)`
  (natural batching: no wait when idle, requests arriving during a batch form the next one);
- `wait_10ms`: as `natural` with ``max_wait_ms=10``;
- `one_call`: the chunk's questions in one `rag.generate(questions=chunk)` call: what a batcher could
  at best reach (no queueing, one batch per chunk);
- `lone_sequential` / `lone_natural` / `lone_wait_10ms`: a lone caller, one question at a time,
  each path once per question in a rotated order: the latency one user pays for a batcher.

Throughput = questions / summed wall time of a path's chunks; latency = call to answer per
request (p50/p95); lone ratios are paired per question. Answers are checked equal to the
sequential ones (text and source ids). The load average after each chunk is recorded.

    python benchmarks/serving.py --quick     # 16 questions
    python benchmarks/serving.py             # 64 questions, 16 callers at a time
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


@dataclass
class ServingConfig:
    num_entities: int = 200
    num_questions: int = 64
    callers: int = 16
    num_docs: int = 4
    max_new_tokens: int = 16
    decoding: str = "fast"
    max_batch_size: int = 16
    lone_questions: int = 8
    seed: int = 0
    models: str = "RAGSequence.from_defaults: all-MiniLM-L6-v2 + SmolLM2-135M-Instruct with the reader, greedy"


def build_model(cfg: ServingConfig):
    from contextflow_core import RAGSequence
    from contextflow_core.data import make_synthetic

    data = make_synthetic(num_entities=cfg.num_entities, seed=cfg.seed)
    p = data.passages
    rag = RAGSequence.from_defaults([x.text for x in p], ids=[x.id for x in p], titles=[x.title for x in p],
                                    metadatas=[x.metadata for x in p], num_docs=cfg.num_docs)
    return rag, [ex.question for ex in (data.test + data.train)][: cfg.num_questions]


def _key(answer) -> tuple:
    return answer.text, [p.id for p, _ in answer.sources]


def _sequential(rag, questions, opts) -> tuple[float, list[float], list]:
    start, latencies, answers = time.perf_counter(), [], []
    for q in questions:
        t = time.perf_counter()
        answers.append(rag.generate(questions=[q], **opts)[0])
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - start, latencies, answers


def _concurrent(batcher, questions, opts, callers: int) -> tuple[float, list[float], list]:
    def one(q):
        t = time.perf_counter()
        answer = batcher.generate(q, **opts)
        return time.perf_counter() - t, answer

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=callers) as pool:
        out = list(pool.map(one, questions))
    return time.perf_counter() - start, [t for t, _ in out], [a for _, a in out]


def _lone(rag, batchers: dict, questions, opts) -> dict[str, list[float]]:
    """A lone caller, one question at a time: per question each path once, in a rotated order (paired)."""
    paths = {"lone_sequential": lambda q: rag.generate(questions=[q], **opts)[0],
             **{f"lone_{name}": (lambda q, b=b: b.generate(q, **opts)) for name, b in batchers.items()}}
    latency: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for i, q in enumerate(questions):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t = time.perf_counter()
            paths[name](q)
            latency[name].append(time.perf_counter() - t)
    return latency


def run(rag, questions, cfg: ServingConfig) -> dict[str, Any]:
    """Per chunk of `callers` questions: sequential, then each batcher with `callers` threads (paired by chunk)."""
    from contextflow_core.serving import RequestBatcher

    opts = {"num_docs": cfg.num_docs, "max_new_tokens": cfg.max_new_tokens, "decoding": cfg.decoding}
    rag.generate(questions=questions[:1], **opts)  # warm-up
    batchers = {name: RequestBatcher(rag, max_batch_size=cfg.max_batch_size, max_wait_ms=wait)
                for name, wait in (("natural", 0.0), ("wait_10ms", 10.0))}
    paths = {name: {"wall_s": 0.0, "latency": [], "calls": 0, "same_answers": True, "loadavg": []}
             for name in ("sequential", "one_call", *batchers)}
    with batchers["natural"], batchers["wait_10ms"]:
        for b in batchers.values():
            b.generate(questions[0], **opts)  # warm-up
        for start in range(0, len(questions), cfg.callers):
            chunk = questions[start : start + cfg.callers]
            wall, lat, answers = _sequential(rag, chunk, opts)
            reference = [_key(a) for a in answers]
            _add(paths["sequential"], wall, lat, len(chunk), True)
            t = time.perf_counter()
            answers = rag.generate(questions=chunk, **opts)
            wall = time.perf_counter() - t
            _add(paths["one_call"], wall, [wall] * len(chunk), 1, [_key(a) for a in answers] == reference)
            for name, b in batchers.items():
                calls = b.stats["calls"]
                wall, lat, answers = _concurrent(b, chunk, opts, cfg.callers)
                _add(paths[name], wall, lat, b.stats["calls"] - calls, [_key(a) for a in answers] == reference)
        lone = _lone(rag, batchers, questions[: cfg.lone_questions], opts)
    return _summarise(paths, len(questions), lone)


def _add(path: dict, wall: float, latency: list[float], calls: int, same: bool) -> None:
    path["wall_s"] += wall
    path["latency"] += latency
    path["calls"] += calls
    path["same_answers"] = path["same_answers"] and same
    path["loadavg"].append(common._loadavg())


def _pct(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summarise(paths: dict, n: int, lone: dict[str, list[float]]) -> dict[str, Any]:
    per_path = {}
    for name, p in paths.items():
        per_path[name] = {"questions": n, "wall_s": p["wall_s"], "throughput_qps": n / p["wall_s"],
                          "latency_p50_s": _pct(p["latency"], 0.5), "latency_p95_s": _pct(p["latency"], 0.95),
                          "generate_calls": p["calls"], "same_answers": p["same_answers"],
                          "load_average_after_chunks": p["loadavg"]}
    for name, lat in lone.items():
        per_path[name] = {"questions": len(lat), "wall_s": sum(lat), "throughput_qps": len(lat) / sum(lat),
                          "latency_p50_s": _pct(lat, 0.5), "latency_p95_s": _pct(lat, 0.95)}
    seq = per_path["sequential"]["throughput_qps"]
    ratios = {f"{name}_throughput_vs_sequential": per_path[name]["throughput_qps"] / seq
              for name in ("natural", "wait_10ms", "one_call")}
    ratios.update({f"{name}_p50_vs_lone_sequential": common.paired_ratios(lone[name], lone["lone_sequential"])
                   ["median"] for name in ("lone_natural", "lone_wait_10ms")})
    return {"per_path": per_path, "ratios": ratios}


def report(result: dict[str, Any]) -> str:
    rows = [{"path": name, "questions": r["questions"], "throughput q/s": f"{r['throughput_qps']:.2f}",
             "p50 s": f"{r['latency_p50_s']:.2f}", "p95 s": f"{r['latency_p95_s']:.2f}",
             "generate calls": r.get("generate_calls", ""), "same answers": r.get("same_answers", ""),
             "load avg (1 min) after": ((r.get("load_average_after_chunks") or [None])[-1] or [""])[0]}
            for name, r in result["per_path"].items()]
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items())
    return common.markdown_table(rows) + f"\n\n{ratios}"


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60-entity corpus, 16 questions")
    ap.add_argument("--num-questions", type=int)
    ap.add_argument("--decoding", default="fast", choices=["thorough", "fast", "concat"])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    cfg = ServingConfig(num_entities=60, num_questions=16, lone_questions=4) if args.quick else ServingConfig()
    cfg = dataclasses.replace(cfg, decoding=args.decoding)
    if args.num_questions:
        cfg = dataclasses.replace(cfg, num_questions=args.num_questions)
    env = common.header("serving", dataclasses.asdict(cfg), "cpu")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rag, questions = build_model(cfg)
    result = run(rag, questions, cfg)
    common.log(report(result))
    env["load_average_end"] = common._loadavg()
    payload = {"env": env, "config": dataclasses.asdict(cfg), **result, "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results("serving", payload, args.quick)
    print(json.dumps({"benchmark": "serving", "ratios": {k: round(v, 3) for k, v in result["ratios"].items()},
                      "load_average": env.get("load_average_end")}), flush=True)
    return payload


if __name__ == "__main__":
    main()
