"""LlamaIndex events for one `ContextFlowQueryEngine` query: the retrieval and each decoding pass.

Boundary: turns the steps recorded by `contextflow_integrations.rag_trace` into
LlamaIndex's two observability channels, so handlers of either see the RAG path:

- the instrumentation dispatcher: ``RetrievalStartEvent`` / ``RetrievalEndEvent`` (the K
  nodes, score = prior p(z|x)), then per prompt of each decoding pass an
  ``LLMCompletionStartEvent`` (the rendered prompt f(x, z_k), or the "concat" prompt)
  and an ``LLMCompletionEndEvent`` (the generated text; ``additional_kwargs`` hold the
  passage id, its prior and posterior, whether it is the answer, and the answer's score);
- the legacy callback manager (``LlamaDebugHandler`` and friends): a ``RETRIEVE`` event
  with the nodes and an ``LLM`` event per prompt with ``PROMPT`` and ``COMPLETION``.

The spans these events belong to are the query engine's (``retrieve``, ``synthesize``).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.callbacks.base import EventContext
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent, LLMCompletionStartEvent
from llama_index.core.schema import NodeWithScore

from contextflow_core.types import RagAnswer
from contextflow_integrations.llamaindex.export import node_to_passage, passage_to_node
from contextflow_integrations.rag_trace import DecodingPass, Retrieval

__all__ = ["LLMEvents", "prior_nodes", "retrieval_of"]

#: The dispatcher the query engine's spans and events go through.
dispatcher = get_dispatcher("contextflow_integrations.llamaindex.query_engine")


def prior_nodes(retrieval: Retrieval, b: int = 0) -> list[NodeWithScore]:
    """Question `b`'s K passages as nodes: score = prior p(z|x), ``metadata["retrieval_score"]`` = q . d."""
    nodes = []
    for passage, prior, score in zip(retrieval.passages[b], retrieval.priors[b], retrieval.scores[b], strict=True):
        node = passage_to_node(passage)
        node.metadata["retrieval_score"] = float(score)
        node.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, "retrieval_score"]
        nodes.append(NodeWithScore(node=node, score=float(prior)))
    return nodes


def retrieval_of(question: str, nodes: list[NodeWithScore]) -> Retrieval:
    """The `Retrieval` that `prior_nodes` came from (passages, priors and q . d back from the nodes)."""
    passages = []
    for n in nodes:
        passage = node_to_passage(n.node)
        passage.metadata.pop("retrieval_score", None)
        passages.append(passage)
    return Retrieval(
        questions=[question],
        passages=[passages],
        priors=[[float(n.score or 0.0) for n in nodes]],
        scores=[[float(n.node.metadata.get("retrieval_score", 0.0)) for n in nodes]],
    )


class LLMEvents:
    """LLM start/end events (dispatcher and callback manager) for each prompt of each decoding pass.

    Args:
        callback_manager: The query engine's legacy callback manager.
        retrieval: The passages the query is answered from.
        model_dict: What the events report as the model (name, decoding mode, K, ...).
    """

    def __init__(self, callback_manager: CallbackManager, retrieval: Retrieval, model_dict: dict[str, Any]) -> None:
        self.callback_manager, self.retrieval, self.model_dict = callback_manager, retrieval, model_dict
        self.open: list[tuple[DecodingPass, int, EventContext]] = []

    def start(self, step: DecodingPass) -> None:
        """A pass starts: one start event per prompt."""
        for row, prompt in enumerate(step.prompts):
            dispatcher.event(
                LLMCompletionStartEvent(
                    prompt=prompt, additional_kwargs=self._row_info(step, row), model_dict=self.model_dict
                )
            )
            context = EventContext(self.callback_manager, CBEventType.LLM)
            context.on_start(payload={EventPayload.PROMPT: prompt, EventPayload.SERIALIZED: self.model_dict})
            self.open.append((step, row, context))

    def end(self, answers: list[RagAnswer]) -> None:
        """Decoding ended: one end event per prompt, with its text and the answer's weights and score."""
        for step, row, context in self.open:
            answer = answers[step.rows[row][0]]
            text = step.outputs[row] if row < len(step.outputs) else ""
            posterior = {p.id: float(w) for p, w in answer.sources}
            info = {
                **self._row_info(step, row),
                "chosen": bool(text) and text == answer.text,
                "answer": answer.text,
                "score": float(answer.score),
            }
            if "passage_id" in info:
                info["posterior"] = posterior.get(info["passage_id"])
            response = CompletionResponse(text=text, additional_kwargs=info)
            dispatcher.event(LLMCompletionEndEvent(prompt=step.prompts[row], response=response))
            context.on_end(payload={EventPayload.PROMPT: step.prompts[row], EventPayload.COMPLETION: response})
        self.open = []

    def error(self, error: BaseException) -> None:
        """Decoding failed: the open LLM events end with the exception."""
        for _, _, context in self.open:
            context.on_end(payload={EventPayload.EXCEPTION: error})
        self.open = []

    def _row_info(self, step: DecodingPass, row: int) -> dict[str, Any]:
        b, k = step.rows[row]
        info: dict[str, Any] = {"pass": step.index, "captured": step.captured}
        if k is None:
            info["passage_ids"] = [p.id for p in self.retrieval.passages[b]]
        else:
            info.update(passage_id=self.retrieval.passages[b][k].id, prior=self.retrieval.priors[b][k])
        return info


def same_passages(retrieval: Retrieval, answer: RagAnswer) -> str | None:
    """None when `answer` came from the retrieval's passages, else a message saying how they differ."""
    given = sorted(p.id for p in retrieval.passages[0])
    used = sorted(p.id for p, _ in answer.sources)
    if given == used:
        return None
    return (
        f"nodes: expected the nodes retrieve(query_bundle) returns for this query (ids {used}), got ids {given}; "
        "RAG-Sequence weighs the passages its own retriever found, so call query() or pass "
        "retrieve()'s nodes unchanged"
    )
