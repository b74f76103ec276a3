"""Stop sequences and token hand-over for `ChatContextFlow` / `ContextFlowLLM` decoding.

Boundary: pure helpers around HF ``generate`` (stopping criteria, a streamer that hands
token ids to another thread, stop-sequence cutting); no LangChain types.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any, cast

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

__all__ = ["StopCriteria", "TokenQueue", "cut_at_stop", "held_back"]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to (not including) the first stop sequence, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop sequence."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class StopCriteria(StoppingCriteria):
    """Stops a row once its generated text holds a stop sequence, or when cancelled."""

    def __init__(self, tokenizer: Any, prompt_length: int, stops: Sequence[str], cancel: threading.Event) -> None:
        self.tokenizer, self.prompt_length, self.stops, self.cancel = tokenizer, prompt_length, list(stops), cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
        """(N,) True for each row to stop: cancelled, or its generated text holds a stop sequence."""
        done = torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)
        if self.stops and not self.cancel.is_set():
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
            done = torch.tensor([cut_at_stop(t, self.stops)[1] for t in texts], device=input_ids.device)
        return cast(torch.BoolTensor, done)


class TokenQueue(BaseStreamer):
    """Hands each newly generated token id from the generating thread to the consumer."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """Queue the new token ids (the first call, the prompt, is skipped)."""
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """Mark the end of generation for the consumer."""
        self.queue.put(None)
