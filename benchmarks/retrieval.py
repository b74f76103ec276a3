"""Retrieval: index build throughput with the embedded encoder; search QPS and recall@10 of FAISS factories.

1. Build throughput: `DocumentIndex.from_texts` on synthetic-corpus passages with the embedded
   all-MiniLM-L6-v2 (passages/s, encoding included), and the encoder alone.
2. Large corpora: random unit-norm 384-d float32 vectors (100k; full mode also 1M), indexed with
   `DocumentIndex.from_embeddings` for "Flat", "IVF1024,Flat" and "HNSW32"; queries are other
   random unit vectors. Reported per factory: build time, search QPS through `DocumentIndex.search`
   (batches of 64 queries, and one query per call) and through the raw faiss index, and
   recall@10 against exact search (the Flat result). Search parameters are DocumentIndex's
   defaults (nprobe = max(8, sqrt(nlist)) = 32, efSearch = 64) plus, in full mode, a small sweep.
   nlist stays 1024 at 1M: k-means for 4096 lists on 1M vectors takes too long on 2 cores.
   Random vectors have no cluster structure: the hardest case for IVF and HNSW.
3. Real embeddings: the same factories over `embedded_size` synthetic-corpus passages (100k in full
   mode) encoded with the embedded all-MiniLM-L6-v2, queried with the corpus's own test questions,
   so recall is measured on the embedding distribution a user of the defaults gets.

    python benchmarks/retrieval.py --quick
    python benchmarks/retrieval.py
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


@dataclass
class RetrievalConfig:
    build_entities: int = 400  # synthetic corpus for the build-throughput part
    encode_batch_size: int = 64
    sizes: tuple = (100_000, 1_000_000)
    dim: int = 384
    factories: tuple = ("Flat", "IVF1024,Flat", "HNSW32")
    num_queries: int = 1000
    query_batch: int = 64
    single_queries: int = 200
    k: int = 10
    nprobe_sweep: tuple = ()
    ef_search_sweep: tuple = ()
    embedded_size: int = 100_000  # part 3: real MiniLM embeddings of this many synthetic passages (0: skip)
    seed: int = 0
    faiss_threads: int = 0  # 0: faiss default (omp max threads)


def unit_vectors(n: int, dim: int, rng: np.random.Generator, chunk: int = 200_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + len(x)] = x
    return out


# ----------------------------------------------------------------------------- part 1
def build_throughput(cfg: RetrievalConfig) -> dict[str, Any]:
    from contextflow_core.data import make_synthetic
    from contextflow_core.models.defaults import default_question_encoder
    from contextflow_core.retrieval import DocumentIndex

    data = make_synthetic(num_entities=cfg.build_entities, seed=cfg.seed)
    texts = [p.text for p in data.passages]
    encoder = default_question_encoder()
    encoder.encode(texts[:64], batch_size=cfg.encode_batch_size)  # warm-up
    t_enc, _ = common.timed(lambda: encoder.encode(texts, batch_size=cfg.encode_batch_size))
    t_idx, index = common.timed(lambda: DocumentIndex.from_texts(
        texts, encoder, ids=[p.id for p in data.passages], titles=[p.title for p in data.passages],
        batch_size=cfg.encode_batch_size, show_progress=False))
    queries = encoder.encode([e.question for e in data.test])
    t_search, _ = common.timed(lambda: index.search(queries, 5))
    n = len(texts)
    return {"passages": n, "mean_chars": sum(map(len, texts)) / n,
            "encode_s": t_enc, "encode_passages_per_s": n / t_enc,
            "from_texts_s": t_idx, "from_texts_passages_per_s": n / t_idx,
            "search_queries": len(queries), "search_qps_k5": len(queries) / t_search}


# ----------------------------------------------------------------------------- part 2
def _search_qps(fn, queries: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        fn(queries[i:i + batch])
    return len(queries) / (time.perf_counter() - start)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return hits / exact.size


def _rows_of(index, result) -> np.ndarray:
    return np.array([[index.row_of(i) for i in ids] for ids in result.ids])  # recall is computed on rows


def bench_factory(passages, vectors: np.ndarray, queries: np.ndarray, factory: str, exact: Optional[np.ndarray],
                  cfg: RetrievalConfig, params: list[dict[str, int]]) -> tuple[list[dict[str, Any]], Any]:
    from contextflow_core.retrieval import DocumentIndex

    t_build, index = common.timed(lambda: DocumentIndex.from_embeddings(passages, vectors, index_factory=factory))
    rows = []
    for p in params or [{}]:
        if "nprobe" in p:
            index.nprobe = p["nprobe"]
        if "efSearch" in p:
            index._ef_search = p["efSearch"]
        result = index.search(queries, cfg.k)
        recall = _recall(_rows_of(index, result), exact) if exact is not None else 1.0
        qps_batch = _search_qps(lambda q: index.search(q, cfg.k), queries, cfg.query_batch)
        single = queries[:cfg.single_queries]
        qps_single = _search_qps(lambda q: index.search(q, cfg.k), single, 1)
        index._apply_search_params(cfg.k)
        raw_qps = _search_qps(lambda q: index._faiss.search(q, cfg.k), queries, cfg.query_batch)
        raw_single = _search_qps(lambda q: index._faiss.search(q, cfg.k), single, 1)
        rows.append({"factory": factory, "n": len(vectors), "build_s": t_build,
                     "nprobe": index.nprobe, "efSearch": index._ef_search,
                     f"recall@{cfg.k}": recall,
                     f"qps_batch{cfg.query_batch}": qps_batch, "qps_single": qps_single,
                     f"faiss_qps_batch{cfg.query_batch}": raw_qps, "faiss_qps_single": raw_single})
        common.log("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}))
    exact_rows = _rows_of(index, index.search(queries, cfg.k)) if factory == "Flat" else None
    del index
    gc.collect()
    return rows, exact_rows


def all_factories(passages, vectors: np.ndarray, queries: np.ndarray, data: str,
                  cfg: RetrievalConfig) -> list[dict[str, Any]]:
    """Every factory over one corpus; recall against the first factory's (Flat, exact) results."""
    out, exact = [], None
    for factory in cfg.factories:
        common.log(f"# {data} N={len(vectors):,} {factory}")
        params = []
        if factory.startswith("IVF") and cfg.nprobe_sweep:
            params = [{"nprobe": p} for p in cfg.nprobe_sweep]
        if factory.startswith("HNSW") and cfg.ef_search_sweep:
            params = [{"efSearch": e} for e in cfg.ef_search_sweep]
        rows, exact_rows = bench_factory(passages, vectors, queries, factory, exact, cfg, params)
        if exact_rows is not None:
            exact = exact_rows
        out += [{"data": data, **r} for r in rows]
    return out


def large_corpora(cfg: RetrievalConfig) -> list[dict[str, Any]]:
    from contextflow_core.types import Passage

    rng = np.random.default_rng(cfg.seed)
    out = []
    for n in cfg.sizes:
        vectors = unit_vectors(n, cfg.dim, rng)
        queries = unit_vectors(cfg.num_queries, cfg.dim, rng)
        passages = [Passage(id=str(i), text="") for i in range(n)]
        out += all_factories(passages, vectors, queries, "random unit vectors", cfg)
        del vectors, passages
        gc.collect()
    return out


def embedded_corpus(cfg: RetrievalConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Part 3: the factories over real all-MiniLM-L6-v2 embeddings of `embedded_size` synthetic passages."""
    from contextflow_core.data import make_synthetic
    from contextflow_core.models.defaults import default_question_encoder

    n = cfg.embedded_size
    data = make_synthetic(num_entities=int(n / 4.5) + 1, seed=cfg.seed + 1)  # ~4.75 passages per entity
    if len(data.passages) < n:
        raise RuntimeError(f"the synthetic corpus has {len(data.passages)} passages, fewer than embedded_size={n}")
    passages = data.passages[:n]
    encoder = default_question_encoder()
    t_enc, vectors = common.timed(lambda: encoder.encode([p.text for p in passages], batch_size=cfg.encode_batch_size))
    vectors = np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
    questions = [e.question for e in data.test][:cfg.num_queries]
    queries = encoder.encode(questions, batch_size=cfg.encode_batch_size)
    queries = np.ascontiguousarray(queries.numpy(), dtype=np.float32)
    info = {"passages": n, "queries": len(questions), "encode_s": t_enc, "encode_passages_per_s": n / t_enc}
    common.log("# embedded corpus: " + json.dumps(info))
    rows = all_factories(passages, vectors, queries, "all-MiniLM-L6-v2 embeddings", cfg)
    return rows, info


def report(result: dict[str, Any], k: int, batch: int) -> str:
    b = result["build"]
    lines = [common.markdown_table([{
        "passages": b["passages"], "mean chars": round(b["mean_chars"], 1),
        "encoder passages/s": round(b["encode_passages_per_s"], 1),
        "DocumentIndex.from_texts passages/s": round(b["from_texts_passages_per_s"], 1),
        "search QPS (k=5, one batch)": round(b["search_qps_k5"], 1)}]), ""]
    rows = [{"data": r.get("data", "random unit vectors"), "N": f"{r['n']:,}", "factory": r["factory"],
             "nprobe": r["nprobe"], "efSearch": r["efSearch"],
             "build s": round(r["build_s"], 1), f"recall@{k}": round(r[f"recall@{k}"], 4),
             f"QPS (batch {batch})": round(r[f"qps_batch{batch}"]), "QPS (1 query/call)": round(r["qps_single"]),
             f"raw faiss QPS (batch {batch})": round(r[f"faiss_qps_batch{batch}"]),
             "raw faiss QPS (1/call)": round(r["faiss_qps_single"])} for r in result["large"]]
    lines.append(common.markdown_table(rows))
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", help="random-vector corpus sizes")
    ap.add_argument("--embedded-size", type=int, help="passages of the real-embedding corpus (0: skip that part)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        cfg = RetrievalConfig(build_entities=100, sizes=(100_000,), num_queries=500, single_queries=100,
                              embedded_size=5_000)
    else:
        cfg = RetrievalConfig(nprobe_sweep=(8, 32, 128, 512), ef_search_sweep=(64, 256, 1024))
    if args.sizes:
        cfg = dataclasses.replace(cfg, sizes=tuple(args.sizes))
    if args.embedded_size is not None:
        cfg = dataclasses.replace(cfg, embedded_size=args.embedded_size)
    import faiss

    if cfg.faiss_threads:
        faiss.omp_set_num_threads(cfg.faiss_threads)
    env = common.header("retrieval", dataclasses.asdict(cfg))
    env["faiss"] = faiss.__version__
    env["faiss_omp_threads"] = faiss.omp_get_max_threads()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    build = build_throughput(cfg)
    common.log("# build: " + json.dumps(build))
    large = large_corpora(cfg)
    embedded, embedded_info = embedded_corpus(cfg) if cfg.embedded_size else ([], None)
    result = {"build": build, "large": large + embedded, "embedded_corpus": embedded_info}
    common.log(report(result, cfg.k, cfg.query_batch))
    payload = {"env": env, "config": dataclasses.asdict(cfg), **result, "wall_s": time.perf_counter() - start}
    if not args.no_write:
        common.write_results("retrieval", payload, args.quick)
    print(json.dumps({"benchmark": "retrieval", "from_texts_passages_per_s": round(build["from_texts_passages_per_s"], 1),
                      "recall@10": {f"{r['data'][:6]}:{r['n']}:{r['factory']}:{r['nprobe'] or r['efSearch'] or ''}":
                                    round(r[f"recall@{cfg.k}"], 4) for r in result["large"]}}), flush=True)
    return payload


if __name__ == "__main__":
    main()
