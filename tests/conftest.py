import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (thread start-up dominates); the real
    embedded models keep torch's default."""
    if request.node.get_closest_marker("embedded"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
