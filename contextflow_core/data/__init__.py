"""Dataset readers and the synthetic benchmark generator (plain data, no models)."""
from contextflow_core.data.readers import QAExample, load_passages, load_qa
from contextflow_core.data.synthetic import SyntheticDataset, make_synthetic

__all__ = ["QAExample", "SyntheticDataset", "load_passages", "load_qa", "make_synthetic"]
