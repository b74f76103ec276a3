"""Decoding: per-question latency of `thorough`, `fast` and `concat` against plain HF `generate` on the same prompts.

RAGSequence.from_defaults (MiniLM + SmolLM2-135M-Instruct with the reader) over the synthetic
corpus, K=5, greedy, at most 16 new tokens, one question per call. Runners, measured side by
side (one untimed warm-up call each, then per question every runner once, in a rotated order):

- `thorough`, `fast`, `concat`: `rag.generate(questions=[q], decoding=...)`: retrieval, prompt
  encoding, generation, exact scoring and the posterior bookkeeping included;
- `thorough_uncached`: `thorough` with prompt KV reuse turned off (`kv_cache.uncached()`), the
  path before issue 17: every candidate rescored from scratch under every passage;
- `concat_retriever`: `concat` with `RagConfig(source_weights="retriever")`: sources weighted by
  p(z|x), so no pass of the answer under each passage alone;
- `hf_passages`: plain HF `generate` on the K per-passage prompts `fast`/`thorough` generate from
  (one left-padded batch; token ids prepared outside the timing);
- `hf_concat`: plain HF `generate` on the one prompt holding the K passages that `concat` uses.

Ratios are paired per question. Answers are scored with SQuAD exact match / F1 against the gold
answer. Answer tokens/s = tokens of the returned answer / latency.

    python benchmarks/decoding.py --quick
    python benchmarks/decoding.py
    python benchmarks/decoding.py --device cuda [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

MODES = ("thorough", "fast", "concat")
BASELINES = ("thorough_uncached", "concat_retriever", "hf_passages", "hf_concat")
RATIOS = (("thorough", "fast"), ("thorough_uncached", "thorough"), ("fast", "hf_passages"),
          ("thorough", "hf_passages"), ("concat", "hf_concat"), ("concat_retriever", "hf_concat"),
          ("concat", "fast"))


@dataclass
class DecodingConfig:
    num_entities: int = 200
    num_questions: int = 10
    num_docs: int = 5
    max_new_tokens: int = 16
    runners: tuple = MODES + BASELINES
    seed: int = 0
    split: str = "test"
    device: str = "cpu"
    dtype: str = "float32"
    models: str = "RAGSequence.from_defaults: all-MiniLM-L6-v2 + SmolLM2-135M-Instruct with the reader, greedy"


def build_model(cfg: DecodingConfig):
    from contextflow_core import RAGSequence
    from contextflow_core.data import make_synthetic

    data = make_synthetic(num_entities=cfg.num_entities, seed=cfg.seed)
    p = data.passages
    start = time.perf_counter()
    rag = RAGSequence.from_defaults([x.text for x in p], ids=[x.id for x in p], titles=[x.title for x in p],
                                    metadatas=[x.metadata for x in p], num_docs=cfg.num_docs)
    rag.generator.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))
    rag.question_encoder.to(cfg.device)
    return rag, data, time.perf_counter() - start


def hf_runner(rag, question: str, cfg: DecodingConfig, concat: bool) -> Callable[[], str]:
    """Plain HF `generate` on the prompt(s) `concat` / `fast` generate from, ids prepared beforehand."""
    _, retrieved = rag.retrieve([question], cfg.num_docs)
    passages = retrieved.passages[0]
    encoded = [rag.prompts.encode(question, passages)] if concat else rag.prompts.encode_batch(
        [question], [passages])
    batch = rag.prompts.collate(encoded)
    inputs = {k: batch[k].to(cfg.device) for k in ("input_ids", "attention_mask")}
    tok = rag.generator_tokenizer

    def run() -> str:
        with torch.inference_mode():
            out = rag.generator.generate(**inputs, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    return run


def runners_for(rag, question: str, cfg: DecodingConfig) -> dict[str, Callable[[], str]]:
    from contextflow_core.kv_cache import uncached

    def mode(name: str, reuse: bool = True, source_weights: str = "posterior"):
        def run():
            kwargs = dict(questions=[question], num_docs=cfg.num_docs, max_new_tokens=cfg.max_new_tokens,
                          decoding=name)
            own = rag.config
            rag.config = dataclasses.replace(own, source_weights=source_weights)
            try:
                if reuse:
                    return rag.generate(**kwargs)[0]
                with uncached():
                    return rag.generate(**kwargs)[0]
            finally:
                rag.config = own
        return run

    table = {m: mode(m) for m in MODES}
    table["thorough_uncached"] = mode("thorough", reuse=False)
    table["concat_retriever"] = mode("concat", source_weights="retriever")
    table["hf_passages"] = hf_runner(rag, question, cfg, concat=False)
    table["hf_concat"] = hf_runner(rag, question, cfg, concat=True)
    return {name: table[name] for name in cfg.runners}


def _row(rag, ex, out, t: float) -> dict[str, Any]:
    from contextflow_core.evaluation import exact_match, f1_score, normalize_answer

    text = out if isinstance(out, str) else out.text
    row = {"text": text, "latency_s": t, "exact_match": exact_match(text, [ex.answer]),
           "f1": f1_score(text, [ex.answer]), "contains_gold": normalize_answer(ex.answer) in normalize_answer(text),
           "answer_tokens": len(rag.generator_tokenizer(text, add_special_tokens=False)["input_ids"])}
    if not isinstance(out, str):
        top = out.sources[0][0].id if out.sources else None
        row.update(score=out.score, top_source=top, top_source_is_gold=top in ex.gold_ids)
    return row


def run(rag, examples, cfg: DecodingConfig) -> dict[str, Any]:
    names = list(cfg.runners)
    for fn in runners_for(rag, examples[0].question, cfg).values():  # warm-up
        fn()
    latency: dict[str, list[float]] = {m: [] for m in names}
    rows = []
    for i, ex in enumerate(examples):
        row = {"question": ex.question, "gold": ex.answer, "gold_ids": list(ex.gold_ids)}
        fns = runners_for(rag, ex.question, cfg)
        for name in names[i % len(names):] + names[:i % len(names)]:
            t, out = common.timed(fns[name], cfg.device)
            latency[name].append(t)
            row[name] = _row(rag, ex, out, t)
        rows.append(row)
        common.log(f"  [{i + 1}/{len(examples)}] {ex.question!r} gold={ex.answer!r} | " +
                   " | ".join(f"{m}: {row[m]['text']!r} {row[m]['latency_s']:.2f}s" for m in names))
    return {"per_runner": _per_runner(rows, latency, names), "latency_ratios": _ratios(latency), "answers": rows}


def _per_runner(rows, latency, names) -> dict[str, Any]:
    out = {}
    for m in names:
        mean = lambda key, m=m: sum(float(r[m][key]) for r in rows) / len(rows)
        out[m] = {"latency_s": common.summary(latency[m]), "exact_match": mean("exact_match"), "f1": mean("f1"),
                  "contains_gold": mean("contains_gold"),
                  "answer_tokens_per_s": common.summary([r[m]["answer_tokens"] / r[m]["latency_s"] for r in rows])}
        if "top_source_is_gold" in rows[0][m]:
            out[m]["top_source_is_gold"] = mean("top_source_is_gold")
    return out


def _ratios(latency) -> dict[str, Any]:
    return {f"{a}/{b}": common.paired_ratios(latency[a], latency[b])
            for a, b in RATIOS if a in latency and b in latency}


def report(result: dict[str, Any]) -> str:
    rows = [{"runner": m, "latency s, median [IQR]": common.fmt(s["latency_s"]),
             "min-max s": f"{s['latency_s']['min']:.3g}-{s['latency_s']['max']:.3g}",
             "answer tokens/s": common.fmt(s["answer_tokens_per_s"]),
             "exact match": round(s["exact_match"], 3), "F1": round(s["f1"], 3),
             "top source = gold": round(s["top_source_is_gold"], 3) if "top_source_is_gold" in s else "-"}
            for m, s in result["per_runner"].items()]
    out = [common.markdown_table(rows), ""]
    out.append(common.markdown_table([{"latency ratio (paired)": k, "median [IQR]": common.fmt(v)}
                                      for k, v in result["latency_ratios"].items()]))
    out.append("")
    names = list(result["per_runner"])
    out.append(common.markdown_table([{"question": r["question"], "gold": r["gold"],
                                       **{m: r[m]["text"] for m in names}} for r in result["answers"]]))
    return "\n".join(out)


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60-entity corpus, 4 questions")
    ap.add_argument("--num-questions", type=int)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--runners", help=f"comma-separated subset of {','.join(MODES + BASELINES)}")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    cfg = DecodingConfig(num_entities=60, num_questions=4) if args.quick else DecodingConfig()
    cfg = dataclasses.replace(cfg, device=args.device, dtype=args.dtype)
    if args.num_questions:
        cfg = dataclasses.replace(cfg, num_questions=args.num_questions)
    if args.runners:
        cfg = dataclasses.replace(cfg, runners=tuple(args.runners.split(",")))
    env = common.header("decoding", dataclasses.asdict(cfg), args.device)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rag, data, build_s = build_model(cfg)
    examples = getattr(data, cfg.split)[:cfg.num_questions]
    common.log(f"# corpus {len(data.passages)} passages; model + index built in {build_s:.1f}s; "
               f"{len(examples)} {cfg.split} questions")
    result = run(rag, examples, cfg)
    common.log(report(result))
    env["load_average_end"] = common._loadavg()
    payload = {"env": env, "config": dataclasses.asdict(cfg), "build_s": build_s, **result,
               "wall_s": time.perf_counter() - start}
    if not args.no_write:
        suffix = "" if args.device == "cpu" else f"_{args.device}"
        common.write_results(f"decoding{suffix}", payload, args.quick)
    print(json.dumps({"benchmark": "decoding", "device": args.device,
                      "latency_median_s": {m: round(s["latency_s"]["median"], 3)
                                           for m, s in result["per_runner"].items()},
                      "ratios_median": {k: round(v["median"], 3) for k, v in result["latency_ratios"].items()}}),
          flush=True)
    return payload


if __name__ == "__main__":
    main()
