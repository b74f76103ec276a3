"""LangChain runs inside a `ContextFlowRAG` call: the retrieval and each decoding pass.

Boundary: turns the steps recorded by `contextflow_integrations.rag_trace` into child
runs of the RAG chain run, through LangChain's callback manager, so LangSmith,
Langfuse, Phoenix (OpenInference) or `astream_events` show them:

- a retriever run (``on_retriever_start`` / ``on_retriever_end``) named
  ``ContextFlowRetriever`` per question, whose documents are the K passages with the
  prior ``metadata["prior"]`` = p(z|x) and ``metadata["score"]`` = q . d;
- an LLM run (``on_llm_start`` / ``on_llm_end``) named ``ContextFlowLLM`` per prompt of
  each decoding pass: the prompt is the rendered f(x, z_k) (or the "concat" prompt with
  all K passages), the output the text generated from it, with ``generation_info``
  holding the passage id, its prior and posterior p(z|x,y), and whether it is the
  chosen answer; ``llm_output`` holds the answer and its score log p(y|x).

With no callback handler attached (a plain ``invoke``), the call is one
`RAGSequence.generate` and records nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForChainRun, CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.outputs import Generation, LLMResult

from contextflow_core.types import RagAnswer
from contextflow_integrations.rag_trace import DecodingPass, Retrieval, generate_recording, retrieve

from .retriever import passage_to_document

__all__ = ["LLM_RUN_NAME", "RETRIEVER_RUN_NAME", "answer_with_runs"]

RETRIEVER_RUN_NAME = "ContextFlowRetriever"
LLM_RUN_NAME = "ContextFlowLLM"


def _documents(retrieval: Retrieval, b: int) -> list[Document]:
    return [
        passage_to_document(p, prior=float(prior), score=float(score))
        for p, prior, score in zip(retrieval.passages[b], retrieval.priors[b], retrieval.scores[b], strict=True)
    ]


def _invocation_params(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    config = getattr(model.generator, "config", None)
    name = getattr(config, "_name_or_path", None) or type(model.generator).__name__
    params = {k: v for k, v in options.items() if k != "streamer"}
    params["num_docs"] = model.resolve_num_docs(options.get("num_docs"))
    return {"_type": "contextflow-rag", "model_name": name, **params}


def _result(step: DecodingPass, row: int, retrieval: Retrieval, answer: RagAnswer) -> LLMResult:
    """The LLM run's output: the row's generated text with its passage, weights and the answer's score."""
    b, k = step.rows[row]
    text = step.outputs[row] if row < len(step.outputs) else ""
    posterior = {p.id: float(w) for p, w in answer.sources}
    info: dict[str, Any] = {"chosen": bool(text) and text == answer.text, "captured": step.captured}
    if k is None:
        info["passage_ids"] = [p.id for p in retrieval.passages[b]]
    else:
        passage = retrieval.passages[b][k]
        info.update(passage_id=passage.id, prior=retrieval.priors[b][k], posterior=posterior.get(passage.id))
    return LLMResult(
        generations=[[Generation(text=text, generation_info=info)]],
        llm_output={"answer": answer.text, "score": float(answer.score), "pass": step.index},
    )


def answer_with_runs(
    model: Any, questions: Sequence[str], options: dict[str, Any], managers: Sequence[CallbackManagerForChainRun]
) -> list[RagAnswer]:
    """`model.generate(questions=..., **options)`, with a retriever run and LLM runs under each question's run.

    Args:
        model: The RAGSequence.
        questions: The B questions.
        options: `generate` keywords.
        managers: The chain run of each question (`ContextFlowRAG.invoke` / `batch`).
    """
    children = [m.get_child() for m in managers]
    if not any(child.handlers for child in children):
        return model.generate(questions=list(questions), **options)
    retrievers = [
        child.on_retriever_start(None, q, name=RETRIEVER_RUN_NAME) for child, q in zip(children, questions, strict=True)
    ]
    try:
        retrieval = retrieve(model, questions, options.get("num_docs"))
    except BaseException as e:
        for run in retrievers:
            run.on_retriever_error(e)
        raise
    for b, run in enumerate(retrievers):
        run.on_retriever_end(_documents(retrieval, b))
    params = _invocation_params(model, options)
    runs: list[tuple[DecodingPass, int, CallbackManagerForLLMRun]] = []

    def on_pass(step: DecodingPass) -> None:
        by_question: dict[int, list[int]] = defaultdict(list)
        for i, (b, _) in enumerate(step.rows):
            by_question[b].append(i)
        for b, rows in by_question.items():
            started = children[b].on_llm_start(
                {"name": LLM_RUN_NAME},
                [step.prompts[i] for i in rows],
                invocation_params=params,
                name=LLM_RUN_NAME,
                batch_size=len(rows),
            )
            runs.extend((step, i, run) for i, run in zip(rows, started, strict=True))

    try:
        answers, _ = generate_recording(model, questions, options, retrieval, on_pass)
    except BaseException as e:
        for _, _, llm_run in runs:
            llm_run.on_llm_error(e)
        raise
    for step, row, llm_run in runs:
        llm_run.on_llm_end(_result(step, row, retrieval, answers[step.rows[row][0]]))
    return answers
