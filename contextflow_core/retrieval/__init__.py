"""Retrieval: the passage index (FAISS + passage store), vector-store backends, and the query-time retriever."""

from contextflow_core.retrieval.index import DocumentIndex
from contextflow_core.retrieval.retriever import Retriever, as_retriever
from contextflow_core.retrieval.space_check import SpaceReport, check_embedding_space
from contextflow_core.retrieval.store import InMemoryBackend, StoreHits, StoreRows, VectorStoreBackend
from contextflow_core.retrieval.store_index import StoreIndex
from contextflow_core.retrieval.store_refresh import refresh_store
from contextflow_core.retrieval.strategies import StrategyConfig

__all__ = [
    "DocumentIndex",
    "InMemoryBackend",
    "Retriever",
    "SpaceReport",
    "StoreHits",
    "StoreIndex",
    "StoreRows",
    "StrategyConfig",
    "VectorStoreBackend",
    "as_retriever",
    "check_embedding_space",
    "refresh_store",
]
