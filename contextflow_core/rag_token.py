r"""RAGToken: passages marginalised per answer token, for decoder-only LMs.

.. math::
    p(y|x) = \prod_t \sum_k p_\eta(z_k|x)\, p_\theta(y_t | f(x, z_k), y_{<t})

Same constructor, retrieval, prompts and files as `RAGSequence`; only the
marginalisation (`loss.rag_token_nll` over the same batched (B, K, T) token
log-probs) and the decoding (`generation.rag_token_generate`) differ.

Objectives (`RagConfig.objective`): "marginal" is the RAG-Token marginal NLL
above; "lsr", "ralt" and "emdr2" are defined on per-passage sequence
likelihoods, so they are the same functions as for RAG-Sequence
(`objectives.py`). An objective not in `RAGToken.objectives` is refused by
name, at construction and by `train_rag`.

Shapes: B questions, K passages, T answer positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .loss import rag_token_nll
from .objectives import OBJECTIVES
from .rag import RAGSequence
from .scoring import score_tokens
from .types import RagAnswer, RagOutput


def _token_marginal(model, questions, doc_lp, passages, answers):
    loss, seq_lp, _ = model.token_nll(questions, doc_lp, passages, answers)
    return loss, seq_lp


class RAGToken(RAGSequence):
    """RAG-Token over a FAISS index with a decoder-only generator (see module docstring)."""

    objectives = {**OBJECTIVES, "marginal": _token_marginal}

    def score_tokens(self, questions, passages, answers) -> tuple[torch.Tensor, torch.Tensor]:
        """Token log-probs (B, K, T) and answer mask (B, T)."""
        encoded = self.prompts.encode_batch(questions, passages, answers)
        lp, mask = score_tokens(
            self.generator,
            encoded,
            self.prompts.collate,
            mode=self.config.scoring,
            micro_batch_size=self.config.micro_batch_size,
        )
        B = len(questions)
        lp = lp.view(B, -1, lp.shape[-1])
        if self.config.freeze_generator:
            lp = lp.detach()
        return lp, mask.view(B, -1, mask.shape[-1])[:, 0]

    def token_nll(self, questions, doc_lp, passages, answers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The RAG-Token marginal NLL, log p(y|f(x,z_k)) (B, K) and answer lengths (B,)."""
        token_lp, mask = self.score_tokens(questions, passages, answers)
        loss = rag_token_nll(doc_lp, token_lp.to(doc_lp.device), mask.to(doc_lp.device))
        return loss, token_lp.sum(-1), mask.sum(-1)

    def forward(
        self,
        questions: Sequence[str] | None = None,
        answers: Sequence[str] | None = None,
        num_docs: int | None = None,
        input_ids=None,
        attention_mask=None,
    ) -> RagOutput:
        """Retrieve, score and marginalise per token (`config.objective` "marginal"), or the named objective."""
        if self.config.objective != "marginal":  # sequence-likelihood objectives: as RAG-Sequence
            return super().forward(questions, answers, num_docs, input_ids, attention_mask)
        questions = self._questions(questions, input_ids, attention_mask)
        doc_lp, retrieved = self.retrieve(questions, num_docs)
        if answers is None:
            return RagOutput(None, doc_lp, None, retrieved.passages)
        answers = self._answers(answers, questions)
        loss, seq_lp, lengths = self.token_nll(questions, doc_lp, retrieved.passages, answers)
        return RagOutput(loss, doc_lp, seq_lp, retrieved.passages, lengths)

    @torch.no_grad()
    def generate(
        self,
        questions=None,
        input_ids=None,
        attention_mask=None,
        num_docs=None,
        max_new_tokens: int = 128,
        decoding: str = "token",
        **generate_kwargs,
    ) -> list[RagAnswer]:
        """RAG-Token decoding (greedy, or sampling with do_sample/temperature/top_k)."""
        from .generation import rag_token_generate

        if decoding != "token":
            raise ValueError(f"decoding: RAGToken decodes per token, expected 'token', got {decoding!r}")
        unknown = set(generate_kwargs) - {"do_sample", "temperature", "top_k"}
        if unknown:
            raise ValueError(f"generate_kwargs: RAGToken supports do_sample, temperature, top_k; got {sorted(unknown)}")
        questions = self._questions(questions, input_ids, attention_mask)
        with self.inference():  # locks held, eval mode, every sub-module's own mode restored after
            return rag_token_generate(
                self, questions, self.resolve_num_docs(num_docs), max_new_tokens, **generate_kwargs
            )
