import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny  # noqa: E402


@pytest.fixture
def tokenizer():
    return tiny.tiny_tokenizer()


@pytest.fixture
def generator():
    return tiny.tiny_generator()


@pytest.fixture
def encoder():
    return tiny.tiny_encoder()


PASSAGES = [
    "Zorblat is the capital of Quenia.",
    "The river Mivo flows through Tarsk.",
    "Quenia exports blue salt.",
    "Tarsk was founded in 1204.",
    "The emblem of Quenia is a heron.",
    "Mivo is the longest river of Eldra.",
]


@pytest.fixture
def passages():
    return list(PASSAGES)
