r"""The RAG losses as pure tensor functions (no models, no I/O).

Shapes: B questions, K passages each, T answer positions, V vocabulary,
N = B*K generator sequences, M answer tokens kept after masking.

RAG-Sequence (DESIGN.md, "The maths"):

.. math::
    \mathcal{L} = -\frac{1}{B}\sum_{m=1}^{B} \log \sum_{k=1}^{K}
        p_\eta(z_k|x_m)\, p_\theta(y_m | f(x_m, z_k))

computed as ``-mean_m logsumexp_k [log p_eta + log p_theta]``: the log that the
seed README's formula omits is required by its own words ("negative
log-likelihood"), and logsumexp keeps it finite for long answers whose
probabilities underflow.

Example:
    >>> import torch
    >>> doc = torch.log_softmax(torch.tensor([[2.0, 0.0]]), -1)   # (B=1, K=2)
    >>> seq = torch.tensor([[-1.0, -5.0]])                         # log p(y|f(x,z_k))
    >>> round(float(rag_sequence_nll(doc, seq)), 4)
    1.1245
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def doc_log_probs(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p_eta(z_k|x) = log_softmax(s / tau) over the K retrieved passages.

    Args:
        scores: (B, K) inner products q . d_k, with gradient into q.
        temperature: tau > 0; lower sharpens the retriever distribution.
    """
    return torch.log_softmax(scores.float() / temperature, dim=-1)


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """log p(target_t) at each position, 0 where target is `ignore_index`.

    Computed as gather - logsumexp, so no (.., V) log-softmax tensor is kept
    beside the logits.

    Args:
        logits: (N, T, V) next-token logits aligned with `targets`.
        targets: (N, T) token ids or `ignore_index`.

    Returns:
        (N, T) float32 log-probabilities.
    """
    mask = targets != ignore_index
    safe = targets.masked_fill(~mask, 0)
    logits = logits.float()
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (N, T)
    lp = picked - torch.logsumexp(logits, dim=-1)
    return lp.masked_fill(~mask, 0.0)


def sequence_log_probs(
    token_logprobs: torch.Tensor,
    targets: torch.Tensor,
    length_normalize: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """log p(y | prompt) = sum_t log p(y_t | prompt, y_<t) over answer tokens.

    Args:
        token_logprobs: (N, T) from `token_log_probs` (0 at ignored positions).
        targets: (N, T) the same targets, to count answer tokens.
        length_normalize: divide by the number of answer tokens (a heuristic
            for long answers; off by default since it leaves the marginal
            likelihood objective).

    Returns:
        (N,) sequence log-probabilities.
    """
    total = token_logprobs.sum(-1)
    if length_normalize:
        total = total / (targets != ignore_index).sum(-1).clamp(min=1)
    return total


def rag_sequence_nll(doc_logprobs: torch.Tensor, seq_logprobs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """RAG-Sequence negative marginal log-likelihood.

    Args:
        doc_logprobs: (B, K) log p_eta(z_k | x).
        seq_logprobs: (B, K) log p_theta(y | f(x, z_k)).
        reduction: "mean" (over B, the training loss), "sum" or "none" ((B,)).
    """
    if doc_logprobs.shape != seq_logprobs.shape:
        raise ValueError(
            f"doc_logprobs and seq_logprobs must both be (B, K); got {tuple(doc_logprobs.shape)} "
            f"and {tuple(seq_logprobs.shape)}"
        )
    nll = -torch.logsumexp(doc_logprobs.float() + seq_logprobs.float(), dim=-1)  # (B,)
    return _reduce(nll, reduction)


def rag_token_nll(
    doc_logprobs: torch.Tensor, token_logprobs: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """RAG-Token NLL: per answer position, marginalise over passages, then sum over t.

    Args:
        doc_logprobs: (B, K) log p_eta(z_k | x).
        token_logprobs: (B, K, T) log p_theta(y_t | f(x, z_k), y_<t), answers aligned
            at the same positions in every passage's row.
        mask: (B, T) True at answer positions.
    """
    per_pos = torch.logsumexp(doc_logprobs.float().unsqueeze(-1) + token_logprobs.float(), dim=1)  # (B, T)
    nll = -(per_pos * mask.to(per_pos.dtype)).sum(-1)  # (B,)
    return _reduce(nll, reduction)


def posterior_doc_probs(doc_logprobs: torch.Tensor, seq_logprobs: torch.Tensor) -> torch.Tensor:
    """p(z_k | x, y) = softmax_k(log p_eta(z_k|x) + log p_theta(y|f(x,z_k))), (B, K)."""
    return torch.softmax(doc_logprobs.float() + seq_logprobs.float(), dim=-1)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    reducers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "mean": torch.mean,
        "sum": torch.sum,
        "none": lambda v: v,
    }
    if reduction not in reducers:
        raise ValueError(f"reduction must be one of {sorted(reducers)}, got {reduction!r}")
    return reducers[reduction](values)


def linear_token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """log p(target) from hidden states and the LM head, without a (M, V) logits tensor kept for backward.

    Uses `torch.nn.functional.linear_cross_entropy` (chunked) where torch has it,
    else an explicit chunked loop under checkpointing.

    Args:
        hidden: (M, H) hidden states at the positions that predict `targets`.
        weight: (V, H) LM head weight.
        targets: (M,) token ids.
    """
    lce = getattr(F, "linear_cross_entropy", None)
    options_cls = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if lce is not None and options_cls is not None and hidden.shape[0] > 0:
        options = _lce_options(options_cls, chunk_size, hidden.device)
        if options is not None:
            return -lce(hidden, weight, targets, linear_bias=bias, reduction="none", options=options)
    return _chunked_linear_log_probs(hidden, weight, targets, bias, chunk_size)


def _lce_options(options_cls, chunk_size: int, device: torch.device):
    """Explicit chunking: the "auto" picks are tuned for CUDA; on CPU only
    "accurate" keeps the weight-gradient matmul in fp32."""
    policy = "compact" if device.type == "cuda" else "accurate"
    try:
        return options_cls(batch_chunk_size=chunk_size, chunking_method=None, acc_policy=policy)
    except (TypeError, ValueError):
        return None


def _chunked_linear_log_probs(hidden, weight, targets, bias, chunk_size):
    from torch.utils.checkpoint import checkpoint

    def piece(h, y):
        logits = F.linear(h, weight, bias).float()
        return logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)

    parts = [
        checkpoint(piece, hidden[i : i + chunk_size], targets[i : i + chunk_size], use_reentrant=False)
        for i in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(parts) if parts else hidden.new_zeros(0)


def lsr_kl(
    doc_logprobs: torch.Tensor, seq_logprobs: torch.Tensor, lm_temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """REPLUG-LSR: KL(P_R(z|x) || Q_LM(z|x,y)), the retriever fitted to the LM's preference.

    Q_LM = softmax_k(log p_theta(y|f(x,z_k)) / beta) is a fixed target (no gradient
    into the generator); gradient reaches only the retriever scores.

    Args:
        doc_logprobs: (B, K) log P_R(z_k|x), with gradient.
        seq_logprobs: (B, K) log p_theta(y|f(x,z_k)); detached here.
        lm_temperature: beta.
    """
    target = torch.log_softmax(seq_logprobs.detach().float() / lm_temperature, dim=-1)  # (B, K)
    kl = (doc_logprobs.exp() * (doc_logprobs - target)).sum(-1)  # (B,)
    return _reduce(kl, reduction)


def ralt_nll(seq_logprobs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """RA-DIT retrieval-augmented LM training: each retrieved passage is its own example.

    L = -(1/BK) sum_{m,k} log p_theta(y_m | f(x_m, z_k)); the retriever gets no gradient.
    """
    per_question = -seq_logprobs.float().mean(-1)  # (B,)
    return _reduce(per_question, reduction)


def emdr2_nll(
    doc_logprobs: torch.Tensor, seq_logprobs: torch.Tensor, concat_logprobs: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """EMDR^2 for a decoder-only reader (Sachan et al. 2021, as used by Atlas).

    Reader: -log p_theta(y | f(x, z_1..K)) over the concatenated passages.
    Retriever: -log sum_k p_eta(z_k|x) sg[p_theta(y|f(x,z_k))], the per-passage LM
    likelihood as a fixed target, so the retriever is pulled towards the posterior.

    Args:
        doc_logprobs: (B, K) log p_eta(z_k|x), with gradient.
        seq_logprobs: (B, K) per-passage log-likelihoods (detached here).
        concat_logprobs: (B,) log p_theta(y | all K passages in one prompt), with gradient.
    """
    retriever = -torch.logsumexp(doc_logprobs.float() + seq_logprobs.detach().float(), dim=-1)  # (B,)
    return _reduce(retriever - concat_logprobs.float(), reduction)
