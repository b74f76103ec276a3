"""Framework adapters for ContextFlow, each an optional extra.

- `contextflow_integrations.langchain` (``pip install 'contextflow[langchain]'``): retriever,
  chat model / LLM, RAG Runnable, and fine-tuning from a vector store.
- `contextflow_integrations.llamaindex` (``pip install 'contextflow[llamaindex]'``): retriever,
  LLM, query engine, and fine-tuning from an index.

Adapters are thin (conversion + delegation to `contextflow_core`) and import their
framework only when used; `contextflow_core` never imports either framework.
"""
