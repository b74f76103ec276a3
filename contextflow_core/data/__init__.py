"""Dataset readers, the synthetic benchmark generator, and QA generation from passages (`generate_qa`)."""

from contextflow_core.data.qa_filters import QAFilters
from contextflow_core.data.qa_generation import QAWriterError, generate_qa
from contextflow_core.data.qa_result import QAGenerationResult, QAReport
from contextflow_core.data.readers import QAExample, load_passages, load_qa
from contextflow_core.data.synthetic import SyntheticDataset, make_synthetic

__all__ = [
    "QAExample",
    "QAFilters",
    "QAGenerationResult",
    "QAReport",
    "QAWriterError",
    "SyntheticDataset",
    "generate_qa",
    "load_passages",
    "load_qa",
    "make_synthetic",
]
