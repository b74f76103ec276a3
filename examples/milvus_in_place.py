"""Train ContextFlow in place on a Milvus collection and hand the trained query encoder back to the app.

1. The app: passages embedded with all-MiniLM-L6-v2 (a LangChain `HuggingFaceEmbeddings`) in
   a Milvus collection (Milvus Lite here: a local file, the same client API as a cluster),
   and a LangChain retriever that searches it with an `Embeddings` object.
2. `finetune_from_vectorstore(MilvusBackend(...), qa, mode="in_place")`: no export, no
   re-embedding. ContextFlow searches the collection live, takes the stored vectors of the
   top-K hits, checks they come from MiniLM (the embedding-space check), and trains the
   question encoder and the generator jointly (RAG-Sequence); the passage side stays frozen.
3. `result.embeddings` (`ContextFlowEmbeddings`: queries by the trained encoder, documents by
   the frozen MiniLM) goes into the app's **unchanged** retriever: it now ranks exactly like
   `ContextFlowRetriever`, and the collection was never touched.

The data are invented facts (`make_synthetic`). langchain-milvus is not needed: the app's
retriever below is ten lines over `pymilvus`; with langchain-milvus installed its `Milvus`
store takes `embedding_function=result.embeddings` the same way.

Run:
    python examples/milvus_in_place.py            # ~300 passages, a few minutes on CPU
    python examples/milvus_in_place.py --smoke    # tiny settings, < 1 minute
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict  # noqa: E402

from contextflow_core.config import TrainConfig  # noqa: E402
from contextflow_core.data.synthetic import make_synthetic  # noqa: E402
from contextflow_core.evaluation.metrics import recall_at_k  # noqa: E402
from contextflow_core.models.defaults import ENCODER_NAME, ENCODER_PACKAGE, _package_dir  # noqa: E402


class MilvusRetriever(BaseRetriever):
    """The app's retriever: embeds the query with `embeddings` and searches a Milvus collection."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    client: object
    collection: str
    embeddings: Embeddings
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.client.search(self.collection, data=[self.embeddings.embed_query(query)], limit=self.k,
                                  output_fields=["text", "title"], search_params={"metric_type": "IP"})[0]
        return [Document(page_content=h["entity"]["text"], metadata={"title": h["entity"]["title"]}, id=h["id"])
                for h in hits]


def build_collection(client, data, embeddings) -> None:
    """What the app already has: a collection of MiniLM vectors, and an alias it reads through."""
    from contextflow_integrations.stores import MilvusBackend

    backend = MilvusBackend.create(client, "docs_v1", 384, metric="IP", embedding_model=ENCODER_NAME, alias="docs")
    texts = [p.text for p in data.passages]
    vectors = embeddings.embed_documents(texts)
    client.insert("docs_v1", [{"id": p.id, "vector": v, "text": p.text, "title": p.title or ""}
                              for p, v in zip(data.passages, vectors)])
    assert backend.count() == len(texts)


def snapshot(backend) -> dict:
    return {i: v.tobytes() for rows in backend.iter_rows(1000) for i, v in zip(rows.ids, rows.vectors)}


def recall(retriever, examples, k: int) -> float:
    ids = [[d.id for d in retriever.invoke(ex.question)] for ex in examples]
    return recall_at_k(ids, [ex.gold_ids for ex in examples], k)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings (CI): < 1 minute")
    parser.add_argument("--db", default=None, help="Milvus Lite file (default: a temporary folder)")
    parser.add_argument("--entities", type=int, default=None, help="invented entities (default 80, smoke 8)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 60, smoke 3)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from pymilvus import MilvusClient

    from contextflow_integrations.langchain import finetune_from_vectorstore
    from contextflow_integrations.stores import MilvusBackend, encoder_from_embeddings

    k = 2 if args.smoke else 4
    data = make_synthetic(num_entities=args.entities or (8 if args.smoke else 80), seed=0)
    held_out = (data.val + data.test)[: 8 if args.smoke else None]
    db = args.db or os.path.join(tempfile.mkdtemp(prefix="contextflow-milvus-"), "docs.db")
    os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)

    # 1. The app as it is: MiniLM embeddings, a Milvus collection, a retriever over it.
    minilm = HuggingFaceEmbeddings(model_name=str(_package_dir(ENCODER_PACKAGE) / "model"))
    client = MilvusClient(db)
    build_collection(client, data, minilm)
    app = MilvusRetriever(client=client, collection="docs", embeddings=minilm, k=k)
    print(f"== collection 'docs' in {db}: {len(data.passages)} passages embedded with {ENCODER_NAME}")
    print(f"   app retriever recall@{k} on {len(held_out)} held-out questions: {recall(app, held_out, k):.2f}")

    # 2. Train in place: the store's own model is the starting question encoder.
    backend = MilvusBackend(client, "docs")
    before = snapshot(backend)
    config = TrainConfig(max_steps=args.steps or (3 if args.smoke else 60), learning_rate=2e-5, progress=False,
                         plot=False, log_every=1, seed=0)
    result = finetune_from_vectorstore(backend, data.train, mode="in_place", encoder=encoder_from_embeddings(minilm),
                                       train_config=config, batch_size=2, num_docs=k, k=k, max_new_tokens=12)
    losses = [r["loss"] for r in result.history.train]
    changed = sum(before[i] != v for i, v in snapshot(backend).items())
    print(f"== trained in place: {result.history.global_step} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"   passages re-embedded: {changed} of {len(before)} (the collection is untouched)")

    # 3. Hand the trained query side back to the unchanged app retriever.
    app.embeddings = result.embeddings
    same = all([d.id for d in app.invoke(ex.question)] == [d.id for d in result.retriever.invoke(ex.question)]
               for ex in held_out)
    print(f"   unchanged retriever ranks exactly like ContextFlowRetriever: {same}")
    print(f"   app retriever recall@{k} with ContextFlowEmbeddings: {recall(app, held_out, k):.2f}")
    answer = result.chain.invoke(held_out[0].question)
    print(f"   Q: {held_out[0].question}\n   A: {answer['answer']!r} (gold {held_out[0].answer!r}); "
          f"top source {answer['source_documents'][0].id}")


if __name__ == "__main__":
    main()
