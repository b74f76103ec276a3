"""Milvus (and Milvus Lite) as a ContextFlow store backend, through pymilvus' `MilvusClient`.

Boundary: reads (and, on request, writes) one collection; knows nothing of models.
The same client API talks to a Milvus cluster (``MilvusClient("http://host:19530")``)
and to Milvus Lite, a local file (``MilvusClient("/tmp/docs.db")``, extra
``pip install 'contextflow[milvus]'``): the reference backend for corpora past one machine.

Field mapping (all configurable): the primary key `id_field` (ids are handed to
ContextFlow as strings), the float vector `vector_field`, the passage text
`text_field`; every other scalar field and every dynamic field is metadata
(or only `metadata_fields` when given). The passage title is the metadata key
the model is told to use (``"title"`` by default). Scores are "higher is
better": IP and COSINE distances as Milvus returns them, L2 negated.

Atomic refresh: when the backend is opened on an **alias** (``client.create_alias(
"docs_v1", "docs")`` then ``MilvusBackend(client, "docs")``), `staging()` creates an
empty collection with the same schema and index and `promote(staging)` points the
alias at it in one call (`alter_alias`); readers of the alias see the old or the
new collection, never a mix. The old collection is kept (ContextFlow did not
write it); drop it yourself once the new one serves.

Example:
    >>> from pymilvus import MilvusClient  # doctest: +SKIP
    >>> backend = MilvusBackend(MilvusClient("/tmp/docs.db"), "docs")  # doctest: +SKIP
    >>> backend.search(question_vectors, k=5).ids  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from contextflow_core.retrieval.store import StoreHits, StoreRows

from ._common import (
    HIGHER_IS_BETTER,
    as_queries,
    check_ids,
    check_name,
    check_positive,
    check_rows,
    hits_from_lists,
    rows_in_order,
    split_metadata,
)

HINT_PROPERTY = "contextflow.embedding_model"  # collection property naming the model that embedded the rows
METRICS = ("IP", "COSINE", "L2")


class MilvusBackend:
    """One Milvus collection (or alias) as a `VectorStoreBackend`.

    Args:
        client: A `pymilvus.MilvusClient` (a Milvus Lite file path or a server URI).
        collection: Collection name or alias (an alias enables `staging`/`promote`).
        id_field: Primary-key field (VARCHAR or INT64).
        vector_field: Float-vector field holding the stored passage embeddings.
        text_field: Field (or dynamic key) holding the passage text.
        metadata_fields: Only these fields are metadata; None: every other field.
        metric: "IP", "COSINE" or "L2"; None: read from the vector field's index.
        search_params: Extra engine search params (e.g. ``{"ef": 64}`` for HNSW).
        embedding_model_hint: The model that embedded the rows (for error messages);
            None: the collection property ``contextflow.embedding_model`` when set.

    Raises:
        ValueError: The collection does not exist, a field is missing, or a bad metric.
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        id_field: str = "id",
        vector_field: str = "vector",
        text_field: str = "text",
        metadata_fields: Sequence[str] | None = None,
        metric: str | None = None,
        search_params: dict | None = None,
        embedding_model_hint: str | None = None,
    ) -> None:
        self.client = client
        self.collection = check_name(collection, "collection")
        self.id_field, self.vector_field = check_name(id_field, "id_field"), check_name(vector_field, "vector_field")
        self.text_field = check_name(text_field, "text_field")
        self.metadata_fields = None if metadata_fields is None else [str(f) for f in metadata_fields]
        if not client.has_collection(collection):
            raise ValueError(
                f"collection: no collection or alias {collection!r} in this Milvus "
                f"(it has {client.list_collections()}); create it first or use MilvusBackend.create"
            )
        self._describe()
        self.metric = self._metric(metric)
        self.search_params = dict(search_params or {})
        props = self._description.get("properties") or {}
        self.embedding_model_hint = embedding_model_hint or props.get(HINT_PROPERTY)

    # ------------------------------------------------------------------ schema
    def _describe(self) -> None:
        self._description = self.client.describe_collection(self.collection)
        fields = {f["name"]: f for f in self._description["fields"]}
        for arg, field in (("id_field", self.id_field), ("vector_field", self.vector_field)):
            if field not in fields:
                raise ValueError(
                    f"{arg}: the collection {self.collection!r} has no field {field!r} (fields: {sorted(fields)})"
                )
        if self.text_field not in fields and not self._description.get("enable_dynamic_field"):
            raise ValueError(
                f"text_field: the collection {self.collection!r} has no field {self.text_field!r} "
                f"and no dynamic fields (fields: {sorted(fields)})"
            )
        self.dim = int(fields[self.vector_field]["params"]["dim"])
        id_type = fields[self.id_field]["type"]
        self._int_ids = "INT" in str(getattr(id_type, "name", id_type)).upper()

    def _metric(self, metric: str | None) -> str:
        if metric is None:
            for name in self.client.list_indexes(self.collection, field_name=self.vector_field):
                metric = self.client.describe_index(self.collection, name).get("metric_type")
            metric = metric or "IP"
        metric = str(metric).upper()
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
        return metric

    @property
    def name(self) -> str:
        """``"milvus:<collection>"``, recorded in saved models and errors."""
        return f"milvus:{self.collection}"

    @property
    def is_alias(self) -> bool:
        """Whether `collection` is an alias (then `promote` can switch it atomically)."""
        return self.client.describe_collection(self.collection)["collection_name"] != self.collection

    # ------------------------------------------------------------------ reads
    def _row(self, entity: dict) -> tuple[Any, str | None, dict]:
        skip = (self.id_field, self.vector_field, self.text_field)
        return (
            entity.get(self.vector_field),
            entity.get(self.text_field),
            split_metadata(entity, skip, self.metadata_fields),
        )

    def search(self, query_vectors: Any, k: int) -> StoreHits:
        """Top-k rows per query, best first, with their stored vectors, texts and metadata.

        Args:
            query_vectors: (B, D) float32 query embeddings.
            k: Hits per query.

        Raises:
            ValueError: Wrong query shape, or fewer than k rows in the collection.
        """
        k = check_positive(k, "k")
        queries = as_queries(query_vectors, self.dim, self.name)
        params = {"metric_type": self.metric, "params": dict(self.search_params)}
        results = self.client.search(
            self.collection,
            data=queries.tolist(),
            limit=k,
            output_fields=["*"],
            search_params=params,
            anns_field=self.vector_field,
        )
        to_score = HIGHER_IS_BETTER[self.metric]
        per_query = [
            [
                (hit.get(self.id_field, hit.get("id")), to_score(hit["distance"]), *self._row(hit["entity"]))
                for hit in hits
            ]
            for hits in results
        ]
        return hits_from_lists(per_query, k, self.dim, self.name, self.count)

    def count(self) -> int:
        """Rows in the collection."""
        return int(self.client.query(self.collection, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def _key(self, doc_id: str) -> Any:
        if self._int_ids:
            try:
                return int(doc_id)
            except ValueError:
                raise ValueError(f"ids: the collection {self.collection!r} has integer ids, got {doc_id!r}") from None
        return doc_id

    def get(self, ids: Sequence[str]) -> StoreRows:
        """The rows with these ids, in that order.

        Raises:
            KeyError: Some ids are not in the collection (the message lists a few).
        """
        wanted = check_ids(ids)
        found = (
            self.client.get(self.collection, ids=[self._key(i) for i in wanted], output_fields=["*"]) if wanted else []
        )
        by_id = {str(e[self.id_field]): self._row(e) for e in found}
        return rows_in_order(wanted, by_id, self.dim, self.name)

    def iter_rows(self, batch_size: int = 1000) -> Iterator[StoreRows]:
        """Every row, `batch_size` at a time (a query iterator: constant memory)."""
        batch_size = check_positive(batch_size, "batch_size")
        iterator = self.client.query_iterator(self.collection, batch_size=batch_size, output_fields=["*"])
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    return
                ids = [str(e[self.id_field]) for e in batch]
                yield rows_in_order(
                    ids, {i: self._row(e) for i, e in zip(ids, batch, strict=True)}, self.dim, self.name
                )
        finally:
            iterator.close()

    # ------------------------------------------------------------------ writes
    def upsert(self, rows: StoreRows) -> None:
        """Insert or replace rows by id (vector, text, metadata).

        A replaced row gets exactly the new metadata: Milvus Lite's upsert keeps old dynamic
        fields, so rows already present are deleted first, then every row is inserted.
        """
        rows = check_rows(rows, self.dim, self.name)
        if not rows.ids:
            return
        keys = [self._key(i) for i in rows.ids]
        data = [
            {**meta, self.id_field: key, self.vector_field: vector.tolist(), self.text_field: text}
            for key, vector, text, meta in zip(keys, rows.vectors, rows.texts, rows.metadata, strict=True)
        ]
        present = [e[self.id_field] for e in self.client.get(self.collection, ids=keys, output_fields=[self.id_field])]
        if present:
            self.client.delete(self.collection, ids=present)
        self.client.insert(self.collection, data)

    def staging(self, suffix: str | None = None) -> MilvusBackend:
        """A backend over a new, empty collection with this one's schema and index (for `promote`).

        Args:
            suffix: Name suffix of the new collection; default ``__cf<n>``, the first free n.

        Raises:
            ValueError: This backend is not opened on an alias (nothing could be switched atomically).
        """
        if not self.is_alias:
            raise ValueError(
                f"collection: {self.collection!r} is a collection, not an alias, so a new version "
                "cannot replace it atomically; create an alias (client.create_alias(collection, "
                "'docs')) and open MilvusBackend(client, 'docs'), or refresh by upsert"
            )
        target = self.client.describe_collection(self.collection)["collection_name"]
        base = target.split("__cf")[0]
        existing = set(self.client.list_collections())
        name = (
            f"{base}{suffix}"
            if suffix
            else next(f"{base}__cf{n}" for n in range(1, 10**6) if f"{base}__cf{n}" not in existing)
        )
        schema = self.client.describe_collection(target)
        index_params = self.client.prepare_index_params()
        for index_name in self.client.list_indexes(target):
            info = self.client.describe_index(target, index_name)
            extra = {
                k: v
                for k, v in info.items()
                if k
                not in (
                    "index_type",
                    "metric_type",
                    "field_name",
                    "index_name",
                    "total_rows",
                    "indexed_rows",
                    "pending_index_rows",
                    "state",
                )
            }
            index_params.add_index(
                info["field_name"],
                index_type=info.get("index_type", "FLAT"),
                metric_type=info.get("metric_type"),
                params=extra,
            )
        self.client.create_collection(
            name, schema=self._schema(schema), index_params=index_params, properties=schema.get("properties") or {}
        )
        return MilvusBackend(
            self.client,
            name,
            id_field=self.id_field,
            vector_field=self.vector_field,
            text_field=self.text_field,
            metadata_fields=self.metadata_fields,
            metric=self.metric,
            search_params=self.search_params,
            embedding_model_hint=self.embedding_model_hint,
        )

    def _schema(self, description: dict) -> Any:
        from pymilvus import MilvusClient

        schema = MilvusClient.create_schema(
            auto_id=bool(description.get("auto_id")), enable_dynamic_field=bool(description.get("enable_dynamic_field"))
        )
        for f in description["fields"]:
            schema.add_field(f["name"], f["type"], is_primary=bool(f.get("is_primary")), **(f.get("params") or {}))
        return schema

    def promote(self, staging: MilvusBackend) -> None:
        """Point this backend's alias at `staging`'s collection, atomically (`alter_alias`)."""
        if not isinstance(staging, MilvusBackend) or staging.client is not self.client:
            raise ValueError(f"staging: expected a MilvusBackend from {self.name}.staging(), got {staging!r}")
        if not self.is_alias:
            raise ValueError(f"collection: {self.collection!r} is not an alias; nothing to switch")
        self.client.alter_alias(staging.collection, self.collection)
        self._describe()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        client: Any,
        collection: str,
        dim: int,
        *,
        metric: str = "IP",
        id_field: str = "id",
        vector_field: str = "vector",
        text_field: str = "text",
        max_id_length: int = 512,
        embedding_model: str | None = None,
        alias: str | None = None,
    ) -> MilvusBackend:
        """Create an empty collection (string ids, FLAT index, dynamic metadata fields) and open it.

        Args:
            client: A `MilvusClient`.
            collection: New collection name (an existing one is an error: nothing is dropped).
            dim: Vector dimension.
            metric: "IP", "COSINE" or "L2".
            id_field, vector_field, text_field: Field names.
            max_id_length: Longest id.
            embedding_model: Recorded as the ``contextflow.embedding_model`` property (the hint).
            alias: Also create this alias for the collection and open the backend on it.
        """
        from pymilvus import DataType, MilvusClient

        check_positive(dim, "dim")
        if str(metric).upper() not in METRICS:
            raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
        if client.has_collection(collection):
            raise ValueError(
                f"collection: {collection!r} already exists; open it with MilvusBackend(client, "
                f"{collection!r}) or choose a new name"
            )
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field(id_field, DataType.VARCHAR, is_primary=True, max_length=max_id_length)
        schema.add_field(vector_field, DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field(text_field, DataType.VARCHAR, max_length=65535)
        index = client.prepare_index_params()
        index.add_index(vector_field, index_type="FLAT", metric_type=str(metric).upper())
        properties = {HINT_PROPERTY: embedding_model} if embedding_model else {}
        client.create_collection(collection, schema=schema, index_params=index, properties=properties)
        if alias:
            client.create_alias(collection, alias)
        return cls(client, alias or collection, id_field=id_field, vector_field=vector_field, text_field=text_field)

    def __repr__(self) -> str:
        return f"MilvusBackend({self.collection!r}, dim={self.dim}, metric={self.metric!r})"
