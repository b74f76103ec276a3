"""Index builds on a local Ray cluster (Ray Data actor pool) equal the single-process build.

One local cluster (`ray.init(num_cpus=2)`) serves the module; Ray talks to its own
processes over localhost TCP, hence `enable_socket`. Slow: the cluster start alone
takes 10-30 s on 2 busy cores.
"""
import json

import numpy as np
import pytest
import tiny

from contextflow_core.models import load_encoder
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.retrieval.ray_build import build_index_ray, upsert_ray
from contextflow_core.retrieval.store import InMemoryBackend

ray = pytest.importorskip("ray")

ROWS = [{"id": f"p{i:02d}", "text": f"Passage {i}: the river {'MivoTarskQuenia'[i % 3::3]} is {i * 7} km long.",
         "title": f"River {i}" if i % 4 else None, "metadata": {"source": f"doc{i // 5}", "n": i}}
        for i in range(40)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny BERT encoder saved as a folder: the spec every Ray actor loads by itself."""
    folder = tmp_path_factory.mktemp("encoder")
    tiny.tiny_bert(seed=3).save_pretrained(folder)
    tiny.tiny_tokenizer(chat_template=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _local(encoder_dir):
    return DocumentIndex.from_texts([r["text"] for r in ROWS], load_encoder(encoder_dir),
                                    ids=[r["id"] for r in ROWS], titles=[r["title"] for r in ROWS],
                                    metadatas=[r["metadata"] for r in ROWS], show_progress=False)


@pytest.mark.slow
@pytest.mark.enable_socket
def test_ray_build_from_jsonl_equals_the_single_process_build(cluster, encoder_dir, tmp_path):
    path = tmp_path / "passages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    built = DocumentIndex.from_ray(str(path), encoder_dir, num_workers=2, batch_size=8, num_cpus_per_worker=0.5)
    local = _local(encoder_dir)
    assert built.ids == local.ids  # same ids, same order
    assert built.passages == local.passages  # texts, titles, metadata
    np.testing.assert_allclose(built.embeddings.numpy(), local.embeddings.numpy(), atol=1e-5, rtol=0)
    assert built.encoder_name == local.encoder_name == encoder_dir
    queries = local.embeddings[:5].numpy()
    assert built.search(queries, k=3).ids == local.search(queries, k=3).ids


@pytest.mark.slow
@pytest.mark.enable_socket
def test_ray_upsert_into_a_store_backend_and_column_errors(cluster, encoder_dir):
    items = [{**r, "metadata": json.dumps(r["metadata"])} for r in ROWS]  # JSON-string metadata column
    local = _local(encoder_dir)
    store = InMemoryBackend(["seed"], np.zeros((1, local.dim), dtype=np.float32), ["placeholder"])
    done = upsert_ray(ray.data.from_items(items), encoder_dir, store, num_workers=1, batch_size=16,
                      num_cpus_per_worker=0.5)
    assert done == len(ROWS) and store.count() == len(ROWS) + 1
    rows = store.get([r["id"] for r in ROWS])
    np.testing.assert_allclose(rows.vectors, local.embeddings.numpy(), atol=1e-5, rtol=0)
    assert rows.texts == [r["text"] for r in ROWS]
    want = [{**r["metadata"], **({"title": r["title"]} if r["title"] else {})} for r in ROWS]
    assert rows.metadata == want

    no_text = ray.data.from_items([{"id": "a", "body": "x"}])
    with pytest.raises(ValueError, match=r"expected columns \['id', 'text'\].*missing \['text'\]"):
        build_index_ray(no_text, encoder_dir, num_cpus_per_worker=0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(source=42), "source: expected a ray.data.Dataset or JSONL/Parquet path"),
    (dict(source="passages.csv"), "source: expected paths ending in .jsonl, .json or .parquet"),
    (dict(encoder=3.5), "encoder: expected a model path / hub id or a zero-argument factory"),
    (dict(num_workers=0), "num_workers: expected a positive integer, got 0"),
    (dict(num_cpus_per_worker=0), "num_cpus_per_worker: expected a number > 0, got 0"),
])
def test_bad_arguments_are_named_before_any_work(kwargs, message):
    args = {"source": "passages.jsonl", "encoder": "some/encoder", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_index_ray(args.pop("source"), args.pop("encoder"), **args)
