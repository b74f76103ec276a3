"""Retrieval: the passage index (FAISS + passage store) and the query-time retriever."""
from contextflow_core.retrieval.index import DocumentIndex
from contextflow_core.retrieval.retriever import Retriever, as_retriever
from contextflow_core.retrieval.strategies import StrategyConfig

__all__ = ["DocumentIndex", "Retriever", "StrategyConfig", "as_retriever"]
