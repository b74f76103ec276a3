"""LangChain's own standard test suites (langchain-tests) against tiny random models.

No standard test is overridden. Tests the suites skip by themselves, from the
capability flags below: tool calling and structured output (`bind_tools` and
`with_structured_output` raise NotImplementedError naming what to use instead: a local
generator has no tool-call format), image/audio/PDF inputs (text-only generator), and the VCR/model-override
tests (no HTTP, one local model per instance).

The suites' async tests carry no asyncio mark and the project runs pytest-asyncio in
strict mode, so each class is marked `asyncio`; the warning that mark gives on the
suites' sync tests is filtered (it is harmless: sync tests run as usual).
"""
from __future__ import annotations

import functools

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

import torch  # noqa: E402
import tiny  # noqa: E402
from train_tiny import build_rag  # noqa: E402

from contextflow_integrations.langchain import ChatContextFlow, ContextFlowRetriever  # noqa: E402

async_suite = [pytest.mark.asyncio,
               pytest.mark.filterwarnings("ignore:The test .* is marked with '@pytest.mark.asyncio'")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _rag():
    return build_rag(num_docs=3)


@functools.lru_cache(maxsize=None)
def _generator_and_tokenizer():
    return tiny.tiny_generator(), tiny.tiny_tokenizer()


@async_suite[0]
@async_suite[1]
class TestContextFlowRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[ContextFlowRetriever]:
        return ContextFlowRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"model": _rag()}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of Quenia?"


class _ChatParams:
    @property
    def chat_model_class(self) -> type[ChatContextFlow]:
        return ChatContextFlow

    @property
    def chat_model_params(self) -> dict:
        generator, tokenizer = _generator_and_tokenizer()
        return {"generator": generator, "tokenizer": tokenizer, "model_name": "tiny-llama"}

    @property
    def supports_model_override(self) -> bool:
        return False  # one local generator per instance; `model=` must name it

    # bind_tools / with_structured_output are defined only to refuse with a message saying
    # what to use instead, so the suites' default detection (overridden -> supported) is wrong.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


@async_suite[0]
@async_suite[1]
class TestChatContextFlowUnit(_ChatParams, ChatModelUnitTests):
    pass


@async_suite[0]
@async_suite[1]
class TestChatContextFlowIntegration(_ChatParams, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {**super().chat_model_params, "max_tokens": 6}  # short answers keep the suite fast
