"""Training objectives of a RAG model (a registry): which loss `forward` returns.

Boundary: assembles the generator scoring a loss needs and calls the pure
functions in `loss.py`. Selected by `RagConfig.objective` (set by
`TrainConfig.objective`). The names are declared in `config.OBJECTIVE_NAMES`
(with the train mode each implies); this registry must hold exactly those.
"marginal" is the model's own marginal likelihood (RAG-Token overrides it,
see `rag_token.py`); the other three are defined on per-passage sequence
likelihoods and are the same for RAG-Sequence and RAG-Token.

- "marginal" (default): the joint RAG-Sequence marginal NLL; trains both sides.
- "lsr": REPLUG-LSR, KL from the retriever to the LM-likelihood posterior over
  passages; the generator is only scored (no gradient, no activations kept).
- "ralt": RA-DIT retrieval-augmented LM training; each retrieved passage is an
  independent example for the generator; the retriever gets no gradient.
- "emdr2": EMDR^2 (Atlas); the reader learns from all K passages in one prompt,
  the retriever from the per-passage likelihoods as a fixed target.

Shapes: B questions, K passages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import MODE_SIDES, OBJECTIVE_TRAIN_MODES
from .loss import emdr2_nll, lsr_kl, rag_sequence_nll, ralt_nll
from .scoring import score_sequences

Objective = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _marginal(model, questions, doc_lp, passages, answers):
    seq_lp = model.score(questions, passages, answers)
    return rag_sequence_nll(doc_lp, seq_lp.to(doc_lp.device)), seq_lp


def _lsr(model, questions, doc_lp, passages, answers):
    with torch.no_grad():
        seq_lp = model.score(questions, passages, answers)
    return lsr_kl(doc_lp, seq_lp.to(doc_lp.device)), seq_lp


def _ralt(model, questions, doc_lp, passages, answers):
    seq_lp = model.score(questions, passages, answers)
    return ralt_nll(seq_lp), seq_lp


def _emdr2(model, questions, doc_lp, passages, answers):
    with torch.no_grad():
        seq_lp = model.score(questions, passages, answers)
    encoded = [model.prompts.encode(q, ps, a) for q, ps, a in zip(questions, passages, answers, strict=True)]
    concat_lp = score_sequences(
        model.generator,
        encoded,
        model.prompts.collate,
        mode=model.config.scoring,
        micro_batch_size=model.config.micro_batch_size,
    )
    if model.config.freeze_generator:
        concat_lp = concat_lp.detach()
    return emdr2_nll(doc_lp, seq_lp.to(doc_lp.device), concat_lp.to(doc_lp.device)), seq_lp


OBJECTIVES: dict[str, Objective] = {"marginal": _marginal, "lsr": _lsr, "ralt": _ralt, "emdr2": _emdr2}

# Which sides an objective trains: (question encoder, generator). The names and the train
# mode each implies live in `config.py` (data only), so config never imports this module.
TRAINS: dict[str, tuple[bool, bool]] = {name: MODE_SIDES[mode] for name, mode in OBJECTIVE_TRAIN_MODES.items()}
