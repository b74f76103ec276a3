"""DocumentIndex, Retriever and the atomic-write helpers: behaviour, persistence, bad input."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

import tiny
from contextflow_core import artifacts, io_utils
from contextflow_core.retrieval import DocumentIndex, Retriever, as_retriever
from contextflow_core.retrieval import index as index_mod
from contextflow_core.types import Passage

TEXTS = [
    "Zorblat is the capital of Quenia.",
    "The river Mivo flows through Tarsk.",
    "Quenia exports blue salt.",
    "Tarsk was founded in 1204.",
    "The emblem of Quenia is a heron.",
    "Mivo is the longest river of Eldra.",
]
QUESTIONS = ["What is the capital of Quenia?", "When was Tarsk founded?", "Which river flows through Tarsk?"]


@pytest.fixture(scope="module")
def enc():
    return tiny.tiny_encoder()


@pytest.fixture
def index(enc):
    return DocumentIndex.from_texts(TEXTS, enc, show_progress=False)


def random_passages(n: int, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    passages = [Passage(id=f"p{i}", text=f"passage {i}") for i in range(n)]
    return passages, rng.standard_normal((n, dim)).astype(np.float32)


def brute_force_ids(queries: torch.Tensor, embeddings: torch.Tensor, ids: list[str], k: int) -> list[list[str]]:
    top = (queries @ embeddings.T).topk(k, dim=1).indices  # (B, K)
    return [[ids[i] for i in row] for row in top.tolist()]


# ----------------------------------------------------------------------------- search
def test_search_gives_exact_top_k(index, enc):
    queries = enc.encode(QUESTIONS)  # (B, D)
    result = index.search(queries, k=3)
    embeddings = enc.encode(TEXTS)
    assert result.ids == brute_force_ids(queries, embeddings, index.ids, 3)
    assert result.scores.shape == (3, 3) and result.scores.dtype == torch.float32
    assert result.embeddings.shape == (3, 3, index.dim) and result.embeddings.dtype == torch.float32
    recomputed = torch.einsum("bd,bkd->bk", queries, result.embeddings)
    torch.testing.assert_close(result.scores, recomputed)
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()  # best first
    assert [[p.id for p in row] for row in result.passages] == result.ids
    assert result.passages[0][0].text == TEXTS[int(result.ids[0][0])]


def test_search_accepts_numpy_and_grad_tensors(index, enc):
    queries = enc.encode(QUESTIONS).requires_grad_(True)
    from_torch = index.search(queries, 2)
    from_numpy = index.search(queries.detach().numpy().astype(np.float64), 2)
    assert from_torch.ids == from_numpy.ids


def test_default_ids_and_len_contains_get(index):
    assert index.ids == [str(i) for i in range(len(TEXTS))]
    assert len(index) == len(TEXTS) and "3" in index and "x" not in index
    assert index.get("3").text == TEXTS[3]
    assert index.encoder_name == "tiny-bert" and index.dim == 16
    with pytest.raises(KeyError, match="x"):
        index.get("x")


def test_k_larger_than_corpus_warns_and_returns_all(index, enc):
    with pytest.warns(UserWarning, match="larger than the index"):
        result = index.search(enc.encode(QUESTIONS[:1]), k=100)
    assert sorted(result.ids[0]) == sorted(index.ids)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW32", "IVF8,PQ8x4"])
def test_approximate_factories_build_and_search(factory):
    passages, embeddings = random_passages(300)
    idx = DocumentIndex.from_embeddings(passages, embeddings, index_factory=factory)
    queries = embeddings[:5] + 0.01  # each query's nearest neighbour is almost surely itself
    result = idx.search(queries, k=10)
    assert result.scores.shape == (5, 10) and result.embeddings.shape == (5, 10, 32)
    assert all(len(set(row)) == 10 for row in result.ids)  # no -1 / missing slots
    ids_exact = brute_force_ids(torch.from_numpy(queries), torch.from_numpy(embeddings), idx.ids, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.ids, ids_exact)])
    assert overlap >= 0.5, factory
    if factory.startswith("IVF"):
        assert idx.nprobe == 8


def test_missing_results_are_filled_exactly():
    passages, embeddings = random_passages(300)
    idx = DocumentIndex.from_embeddings(passages, embeddings, index_factory="IVF64,Flat", nprobe=1)
    result = idx.search(embeddings[:3], k=200)  # one cell of ~5 vectors cannot hold 200
    assert all(len(set(row)) == 200 for row in result.ids)


def test_bad_factory_raises_value_error():
    passages, embeddings = random_passages(20)
    with pytest.raises(ValueError, match="index_factory: .*IVF256"):
        DocumentIndex.from_embeddings(passages, embeddings, index_factory="IVF256,Flat")
    with pytest.raises(ValueError, match="index_factory: .*Nonsense"):
        DocumentIndex.from_embeddings(passages, embeddings, index_factory="Nonsense")


# ----------------------------------------------------------------------------- add / remove
def test_add_then_remove(index, enc):
    new_ids = index.add(["Eldra has three moons.", "Heron feathers are blue."], enc, titles=["Eldra", None])
    assert new_ids == ["6", "7"] and len(index) == 8 and index.get("6").title == "Eldra"
    index.add([Passage("own", "An explicit passage.", metadata={"src": "x"})], embeddings=enc.encode(["z"]))
    queries = enc.encode(QUESTIONS + TEXTS[:2])
    index.remove(["1", "6"])
    assert "1" not in index and "6" not in index and len(index) == 7
    result = index.search(queries, k=4)
    assert result.ids == brute_force_ids(queries, index.embeddings, index.ids, 4)
    assert index.add(["again"], enc) == ["8"]  # first free id counting from len(index); "1" is not reused
    with pytest.raises(KeyError, match="nope"):
        index.remove(["nope"])
    with pytest.raises(ValueError, match="ids: removing all"):
        index.remove(index.ids)


def test_add_and_remove_on_ivf_keep_training():
    passages, embeddings = random_passages(300)
    idx = DocumentIndex.from_embeddings(passages, embeddings, index_factory="IVF16,Flat")
    extra = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    idx.add(["a", "b", "c"], ids=["x", "y", "z"], embeddings=extra)
    idx.remove(["p0", "p1"])
    assert idx.search(extra, k=1).ids == [["x"], ["y"], ["z"]]


def test_add_requires_encoder_or_embeddings(index):
    with pytest.raises(ValueError, match="encoder: expected an encoder"):
        index.add(["text"])
    with pytest.raises(ValueError, match="ids: expected new ids, got '0'"):
        index.add(["text"], ids=["0"], embeddings=np.zeros((1, 16)))
    with pytest.raises(ValueError, match="embeddings: expected dimension 16"):
        index.add(["text"], embeddings=np.zeros((1, 8)))
    with pytest.raises(ValueError, match="texts: expected a list of strings, got a single string"):
        index.add("text", embeddings=np.zeros((1, 16)))


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip_with_unicode(tmp_path, enc):
    ids = ["α", "b/2", "🎉", "d", "e e", "f"]
    titles = ["Zürich", None, "日本語", "t", "", "emoji 🐍"]
    metas = [{"k": "ü", "n": 1}, None, {"nested": {"list": [1, 2.5, None]}}, {}, {"e": "🦜"}, {"b": True}]
    idx = DocumentIndex.from_texts(TEXTS, enc, ids=ids, titles=titles, metadatas=metas, show_progress=False)
    idx.save(tmp_path / "ix")
    loaded = DocumentIndex.load(tmp_path / "ix", expected_encoder_name="tiny-bert", expected_dim=16)
    assert loaded.passages == idx.passages
    assert [p.metadata for p in loaded.passages] == [m or {} for m in metas]
    assert [p.title for p in loaded.passages] == titles
    queries = enc.encode(QUESTIONS)
    a, b = idx.search(queries, 4), loaded.search(queries, 4)
    assert a.ids == b.ids and torch.equal(a.scores, b.scores) and torch.equal(a.embeddings, b.embeddings)
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["count"] == 6 and manifest["dim"] == 16
    assert manifest["metric"] == "inner_product" and manifest["encoder_name"] == "tiny-bert"
    assert set(manifest["files"]) == {"index.faiss", "passages.jsonl", "embeddings.safetensors"}


def test_ivf_round_trip_keeps_nprobe(tmp_path):
    passages, embeddings = random_passages(300)
    idx = DocumentIndex.from_embeddings(passages, embeddings, index_factory="IVF16,Flat", nprobe=3)
    idx.save(tmp_path / "ivf")
    loaded = DocumentIndex.load(tmp_path / "ivf")
    assert loaded.nprobe == 3 and loaded.index_factory == "IVF16,Flat"
    assert loaded.search(embeddings[:4], 5).ids == idx.search(embeddings[:4], 5).ids


@pytest.fixture
def saved(tmp_path, index):
    index.save(tmp_path / "ix")
    return tmp_path / "ix"


def test_load_refuses_mismatched_encoder_and_dim(saved):
    with pytest.raises(ValueError, match="encoder 'tiny-bert', expected_encoder_name is 'other'"):
        DocumentIndex.load(saved, expected_encoder_name="other")
    with pytest.raises(ValueError, match="dimension 16, expected_dim is 768"):
        DocumentIndex.load(saved, expected_dim=768)


@pytest.mark.parametrize("name", ["index.faiss", "passages.jsonl", "embeddings.safetensors"])
def test_load_detects_flipped_bytes(saved, name):
    data = bytearray((saved / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{name}: sha256 checksum mismatch"):
        DocumentIndex.load(saved)


def test_load_detects_truncation(saved):
    path = saved / "embeddings.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        DocumentIndex.load(saved)
    manifest = saved / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(ValueError, match="manifest is not valid JSON"):
        DocumentIndex.load(saved)


def test_load_missing_dir_and_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DocumentIndex.load(tmp_path / "nowhere")
    (saved / "passages.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="passages.jsonl"):
        DocumentIndex.load(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        DocumentIndex.load(saved)


def test_load_refuses_unknown_version_and_inconsistent_count(saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "count": 5}))
    with pytest.raises(ValueError, match="count is 5, file has 6"):
        DocumentIndex.load(saved)
    path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        DocumentIndex.load(saved)


def test_failed_save_keeps_previous_index(saved, index, enc, monkeypatch):
    before = DocumentIndex.load(saved).ids
    index.add(["a new passage"], enc)
    real_write, calls = index_mod._write_file, []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(path, data)

    monkeypatch.setattr(index_mod, "_write_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        index.save(saved)
    assert DocumentIndex.load(saved).ids == before
    assert os.listdir(saved.parent) == ["ix"]  # no temporary directory left behind
    monkeypatch.undo()
    index.save(saved)  # overwriting an existing index works
    assert DocumentIndex.load(saved).ids == index.ids
    assert os.listdir(saved.parent) == ["ix"]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(texts=[]), "texts: expected at least one text"),
    (dict(texts="one string"), "texts: expected a list of strings, got a single string"),
    (dict(texts=["a", 3]), "texts: expected strings, got int at position 1"),
    (dict(texts=["a", "b", "c"], ids=["x", "y"]), "ids: expected 3 ids, one per text, got 2"),
    (dict(texts=["a", "b"], ids=["x", ""]), "ids: expected non-empty string ids, got '' at position 1"),
    (dict(texts=["a", "b"], ids=["x", 7]), "ids: expected non-empty string ids, got 7"),
    (dict(texts=["a", "b", "c"], ids=["x", "y", "x"]), "ids: expected unique ids, got 'x' at positions 0 and 2"),
    (dict(texts=["a", "b"], titles=["t"]), "titles: expected 2 titles, one per text, got 1"),
    (dict(texts=["a", "b"], titles=["t", 5]), "titles: expected a string or None"),
    (dict(texts=["a"], metadatas=[{}, {}]), "metadatas: expected 1 metadatas, one per text, got 2"),
    (dict(texts=["a"], metadatas=["m"]), "metadatas: expected a dict or None"),
    (dict(texts=["a"], batch_size=0), "batch_size: expected a positive integer"),
])
def test_from_texts_rejects_bad_input(enc, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DocumentIndex.from_texts(encoder=enc, show_progress=False, **kwargs)


def test_from_embeddings_rejects_bad_embeddings():
    passages, embeddings = random_passages(4, dim=8)
    with pytest.raises(ValueError, match="passages: expected at least one passage"):
        DocumentIndex.from_embeddings([], np.zeros((0, 8)))
    with pytest.raises(ValueError, match="embeddings: expected 4 rows, one per passage, got 3"):
        DocumentIndex.from_embeddings(passages, embeddings[:3])
    with pytest.raises(ValueError, match=r"embeddings: expected a 2-D array of shape \(N, D\)"):
        DocumentIndex.from_embeddings(passages, embeddings[:, 0])
    for bad in (np.nan, np.inf):
        broken = embeddings.copy()
        broken[2, 1] = bad
        with pytest.raises(ValueError, match="embeddings: expected finite values, got NaN or inf in row 2"):
            DocumentIndex.from_embeddings(passages, broken)
    with pytest.raises(ValueError, match="passages: expected unique ids"):
        DocumentIndex.from_embeddings(passages[:2] + passages[:2], embeddings)
    with pytest.raises(ValueError, match="nprobe: only IVF"):
        DocumentIndex.from_embeddings(passages, embeddings, nprobe=4)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_search_rejects_bad_k(index, k):
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        index.search(np.zeros((1, 16)), k)


def test_search_rejects_bad_queries(index):
    with pytest.raises(ValueError, match=r"query_embeddings: expected dimension 16 \(the index's\), got 8"):
        index.search(np.zeros((2, 8)), 1)
    with pytest.raises(ValueError, match="query_embeddings: expected finite values, got NaN or inf in row 1"):
        index.search(np.array([[0.0] * 16, [np.nan] * 16]), 1)
    with pytest.raises(ValueError, match=r"query_embeddings: expected a 2-D array"):
        index.search(np.zeros(16), 1)


# ----------------------------------------------------------------------------- Retriever
def test_retriever_encodes_and_delegates(index, enc):
    retriever = Retriever(index, enc, k=2)
    got = retriever.retrieve(QUESTIONS)
    assert got.ids == index.search(enc.encode(QUESTIONS), 2).ids
    assert retriever.retrieve(QUESTIONS, k=4).scores.shape == (3, 4)
    assert retriever.search(enc.encode(QUESTIONS)).ids == got.ids
    assert retriever.index is index and retriever.encoder is enc


def test_retriever_bad_input(index, enc):
    with pytest.raises(ValueError, match="encoder: expected a question encoder"):
        Retriever(index).retrieve(["q"])
    with pytest.raises(ValueError, match="questions: expected a list of strings"):
        Retriever(index, enc).retrieve("q")
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        Retriever(index, enc, k=0)
    with pytest.raises(ValueError, match="encoder: expected embeddings of dimension 16"):
        Retriever(index, tiny.tiny_encoder(hidden=8))


def test_as_retriever(index, enc):
    wrapped = as_retriever(index, enc, k=3)
    assert isinstance(wrapped, Retriever) and wrapped.index is index and wrapped.k == 3
    assert as_retriever(wrapped) is wrapped
    assert as_retriever(Retriever(index), enc).encoder is enc
    with pytest.raises(TypeError, match="expected a Retriever or a DocumentIndex"):
        as_retriever("not an index")


# ----------------------------------------------------------------------------- io_utils
def test_atomic_write_and_sha(tmp_path):
    path = tmp_path / "f.bin"
    io_utils.atomic_write_bytes(path, b"abc")
    io_utils.atomic_write_text(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo" and os.listdir(tmp_path) == ["f.bin"]
    assert io_utils.sha256_file(path) == io_utils.sha256_bytes("héllo".encode())


def test_atomic_dir_restores_old_dir_when_final_rename_fails(tmp_path, monkeypatch):
    final, manifest = tmp_path / "out", json.dumps({"kind": artifacts.CHECKPOINT, "files": {"a.txt": {}}})
    with io_utils.atomic_dir(final, kind=artifacts.CHECKPOINT) as tmp:
        (tmp / "a.txt").write_text("old")
        (tmp / "manifest.json").write_text(manifest)
    real_replace = os.replace

    def failing_replace(src, dst):
        if "tmp-" in os.path.basename(os.fspath(src)):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        with io_utils.atomic_dir(final, kind=artifacts.CHECKPOINT) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "manifest.json").write_text(manifest)
    assert (final / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["out"]
    with pytest.raises(FileExistsError):
        (tmp_path / "file").write_text("x")
        with io_utils.atomic_dir(tmp_path / "file"):
            pass
