"""Retrieval: the passage index (FAISS + passage store) and the query-time retriever."""
from contextflow_core.retrieval.index import DocumentIndex
from contextflow_core.retrieval.retriever import Retriever, as_retriever

__all__ = ["DocumentIndex", "Retriever", "as_retriever"]
