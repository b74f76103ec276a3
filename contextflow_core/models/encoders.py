"""Text encoders for the retriever: a transformer body plus pooling.

Boundary: an encoder turns text (or token ids) into vectors. It knows nothing of
indexes, prompts or generators.

Shapes: N texts, L tokens, D embedding size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from contextflow_core.modes import eval_mode

Pooling = Callable[[object, torch.Tensor], torch.Tensor]


def _mean_pool(output, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = output.last_hidden_state  # (N, L, D)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _cls_pool(output, attention_mask: torch.Tensor) -> torch.Tensor:
    return output.last_hidden_state[:, 0]


def _pooler_pool(output, attention_mask: torch.Tensor) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ValueError(
            "pooling='pooler' needs a model whose output has `pooler_output` "
            f"(BERT with pooler, DPR); got {type(output).__name__} without it"
        )
    return pooled


POOLINGS: dict[str, Pooling] = {"mean": _mean_pool, "cls": _cls_pool, "pooler": _pooler_pool}


class TextEncoder(nn.Module):
    """A HF encoder body with pooling and optional L2 normalisation.

    `forward(input_ids, attention_mask)` returns (N, D) embeddings with gradient
    (training); `embed(texts)` does the same from text; `encode(texts)` is the
    batched, gradient-free path used to build indexes and answer queries.

    Args:
        model: Any HF model whose output has `last_hidden_state` (or
            `pooler_output` for pooling="pooler").
        tokenizer: Its tokenizer; optional when only token ids are fed.
        pooling: "mean", "cls" or "pooler".
        normalize: L2-normalise the pooled vector (cosine similarity via inner product).
        max_length: Truncation length for `embed`/`encode`.
        name: Recorded in index manifests so an index can refuse a mismatched encoder.

    Example:
        >>> enc = TextEncoder(bert, tok, pooling="mean", normalize=True)  # doctest: +SKIP
        >>> enc.encode(["a passage"]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 256,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__

    @property
    def dim(self) -> int:
        """D, the embedding size."""
        cfg: Any = self.model.config  # a HF PretrainedConfig
        return int(getattr(cfg, "projection_dim", 0) or cfg.hidden_size)

    @property
    def device(self) -> torch.device:
        """The device of the encoder's weights."""
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]):
        """Padded, truncated (to `max_length`) token tensors of `texts`."""
        if self.tokenizer is None:
            raise ValueError(
                "this encoder has no tokenizer, so it cannot take text; pass token ids "
                "(input_ids=...) or build it with a tokenizer"
            )
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Embeddings (N, D) of token ids, with gradient (pooled, normalized if configured)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = POOLINGS[self.pooling](output, attention_mask)  # (N, D)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) embeddings of `texts` with gradient, on the encoder's device."""
        batch = self.tokenize(texts).to(self.device)
        return self(**batch)

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> torch.Tensor:
        """(N, D) float32 CPU embeddings of `texts`, batched, without gradient, in eval mode.

        All texts are tokenized in one call; batches are formed longest-first by token
        count (little padding) and run under `torch.inference_mode()`; rows come back in
        the input order. Every sub-module's own train/eval mode is restored afterwards.
        """
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        with eval_mode(self), torch.inference_mode():  # the encoder's lock; sub-module modes come back after
            features = self._tokenize_unpadded(texts)
            lengths = [len(ids) for ids in features["input_ids"]]
            order = sorted(range(len(texts)), key=lambda i: -lengths[i])
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            chunks = [
                self(**self._pad(features, rows)).float().cpu()
                for rows in tqdm(batches, desc="encoding", unit="batch", disable=not show_progress)
            ]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(chunks).index_select(0, inverse)  # outside inference mode: a normal tensor

    def _tokenize_unpadded(self, texts: list[str]) -> dict:
        """Token ids (and the tokenizer's other features) of every text, truncated, unpadded."""
        if self.tokenizer is None:
            self.tokenize(texts)  # raises the no-tokenizer error
        return dict(self.tokenizer(texts, padding=False, truncation=True, max_length=self.max_length))

    def _pad(self, features: dict, rows: list[int]) -> dict[str, torch.Tensor]:
        """The `rows` of unpadded `features` as padded (n, L) tensors on the encoder's device."""
        tok = self.tokenizer
        pad_values = {
            "input_ids": tok.pad_token_id if tok.pad_token_id is not None else 0,
            "token_type_ids": getattr(tok, "pad_token_type_id", 0),
        }
        seqs = {key: [features[key][r] for r in rows] for key in pad_values if key in features}
        seqs["attention_mask"] = [[1] * len(ids) for ids in seqs["input_ids"]]
        pad_values["attention_mask"] = 0
        L = max(len(ids) for ids in seqs["input_ids"])
        left = getattr(tok, "padding_side", "right") == "left"
        out = {}
        for key, values in seqs.items():
            batch = torch.full((len(rows), L), pad_values[key], dtype=torch.long)
            for i, seq in enumerate(values):
                if left:
                    batch[i, L - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
                else:
                    batch[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            out[key] = batch.to(self.device)
        return out
