"""Question/answer batches for training and evaluation.

Boundary: turns QA examples (anything `data.readers.load_qa` reads) into batches
of plain text, ``{"questions": [...], "answers": [...], "gold_ids": [[...]], "aliases": [[...]]}``.
It knows nothing of tokenizers, prompts or models: the model turns text into ids.

Shuffling is reproducible: `SeededSampler` draws epoch e's order from a
generator seeded with ``seed + e``, so a resumed run can replay exactly the
order of the interrupted one and skip the batches it already consumed.

Shapes: B questions per batch.

Example:
    >>> loader = make_dataloader([("Who founded Tarsk?", "Ilo")], batch_size=1, seed=0)
    >>> next(iter(loader))["answers"]
    ['Ilo']
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from contextflow_core.data.readers import QAExample, QASource, load_qa

Batch = dict[str, list]

__all__ = ["QADataset", "SeededSampler", "collate_qa", "make_dataloader", "normalize_batch"]


class QADataset(Dataset):
    """A list of `QAExample` as a map-style dataset.

    Args:
        examples: Anything `load_qa` accepts (file path, list of tuples/dicts/QAExample,
            a HF ``datasets.Dataset`` split).
    """

    def __init__(self, examples: QASource) -> None:
        if isinstance(examples, (list, tuple)) and all(isinstance(e, QAExample) for e in examples):
            self.examples = list(examples)
        else:
            self.examples = load_qa(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> QAExample:
        return self.examples[index]


class SeededSampler(Sampler[int]):
    """Indices 0..n-1, shuffled per epoch by a generator seeded with ``seed + epoch``.

    Args:
        num_items: Dataset size n.
        seed: Base seed of the shuffle.
        shuffle: False yields 0..n-1 in order every epoch.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the order of epoch `epoch` (called by the training loop and accelerate)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_items

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready position of the shuffle: seed, epoch and whether it shuffles."""
        return {"seed": self.seed, "epoch": self.epoch, "shuffle": self.shuffle}


def collate_qa(examples: Sequence[QAExample]) -> Batch:
    """Stack examples into one text batch.

    Returns:
        ``questions`` (B,), ``answers`` (B,), ``gold_ids`` (B, *) and ``aliases`` (B, *).
    """
    return {
        "questions": [e.question for e in examples],
        "answers": [e.answer for e in examples],
        "gold_ids": [list(e.gold_ids) for e in examples],
        "aliases": [list(e.aliases) for e in examples],
    }


def make_dataloader(
    examples: QASource | QADataset,
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
    *,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of text batches (see `collate_qa`) with a reproducible shuffle.

    Args:
        examples: A `QADataset` or anything `load_qa` accepts.
        batch_size: B, questions per batch.
        shuffle: Reshuffle every epoch (seeded by ``seed + epoch``).
        seed: Base seed of the shuffle.
        drop_last: Drop a last batch smaller than `batch_size`.
        num_workers: DataLoader worker processes.

    Raises:
        ValueError: `batch_size` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    dataset = examples if isinstance(examples, QADataset) else QADataset(examples)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), seed, shuffle),
        collate_fn=collate_qa,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        raise ValueError(f"batch[{key!r}]: expected a list of strings, got {type(value).__name__}")
    return list(value)


def _pick(batch: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in batch:
            return _as_list(batch[key], key)
    return None


def normalize_batch(batch: Any) -> Batch:
    """Bring a batch from any supported loader to the `collate_qa` layout.

    Accepts dicts with ``questions``/``question`` and ``answers``/``answer`` (lists or a
    single string), optional ``gold_ids`` and ``aliases``, or a list of examples
    (tuples, dicts, `QAExample`).

    Raises:
        ValueError: No question or answer key, or lists of different lengths.
    """
    if isinstance(batch, (list, tuple)):
        return collate_qa(load_qa(list(batch)))
    if not isinstance(batch, dict):
        raise ValueError(f"batch: expected a dict with 'questions' and 'answers' lists, got {type(batch).__name__}")
    questions = _pick(batch, ("questions", "question"))
    answers = _pick(batch, ("answers", "answer"))
    if questions is None or answers is None:
        raise ValueError(
            f"batch: expected keys 'questions' (or 'question') and 'answers' (or 'answer'), got {sorted(batch)}"
        )
    if len(questions) != len(answers):
        raise ValueError(f"batch: {len(questions)} questions but {len(answers)} answers")
    targets = [a[0] if isinstance(a, (list, tuple)) and a else a for a in answers]  # SQuAD-style alias lists
    aliases = batch.get("aliases")
    if aliases is None:
        aliases = [list(a) if isinstance(a, (list, tuple)) else [a] for a in answers]
    gold = batch.get("gold_ids")
    gold = [list(g) for g in gold] if gold is not None else [[] for _ in questions]
    return {"questions": questions, "answers": targets, "gold_ids": gold, "aliases": [list(a) for a in aliases]}
