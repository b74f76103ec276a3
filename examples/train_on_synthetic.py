"""Train a RAG-Sequence model end to end on the synthetic fictional-knowledge benchmark.

Index the passages, evaluate, train retriever and generator jointly, evaluate
again, and answer one question with its sources.

By default the models are tiny and random, built right here (a byte-level
tokenizer, a 1-layer BERT question encoder, a 2-layer Llama generator): the whole
pipeline runs in well under a minute on a CPU, but such models learn little.
`--embedded` uses the embedded all-MiniLM-L6-v2 + SmolLM2-135M-Instruct with LoRA
(a few minutes on a CPU; `contextflow demo` is the tuned version of that run).

Usage:
    python examples/train_on_synthetic.py [--embedded] [--entities 12] [--epochs 2] [--output-dir DIR]
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from contextflow_core.config import PromptConfig, TrainConfig
from contextflow_core.data import make_synthetic
from contextflow_core.evaluation import evaluate
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.training import format_table, make_dataloader, train_rag


def byte_tokenizer():
    """A byte-level tokenizer with no merges: no download, any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<pad>", "<eos>", "<bos>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({char: b + len(specials) for b, char in bytes_to_unicode().items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   model_max_length=512)


def tiny_models():
    """(question encoder, generator, generator tokenizer): small random models."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from contextflow_core.models import TextEncoder

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    bert = BertModel(BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, pad_token_id=0), add_pooling_layer=False)
    encoder = TextEncoder(bert, tokenizer, pooling="mean", normalize=True, max_length=128, name="tiny-bert")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1, bos_token_id=2))
    return encoder, llama, tokenizer


def embedded_models():
    """(question encoder, generator, generator tokenizer): the embedded defaults."""
    from contextflow_core.models import default_generator, default_question_encoder

    generator, tokenizer = default_generator()
    return default_question_encoder(), generator, tokenizer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="use the embedded MiniLM + SmolLM2 (LoRA)")
    parser.add_argument("--entities", type=int, default=8, help="entities in the synthetic world")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--output-dir", help="checkpoints and metrics (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    data = make_synthetic(num_entities=args.entities, seed=args.seed)
    encoder, generator, tokenizer = embedded_models() if args.embedded else tiny_models()
    index = DocumentIndex.from_passages(data.passages, encoder, show_progress=False)
    # Tiny byte-level models pay per character: keep their prompts short.
    prompt = None if args.embedded else PromptConfig(system_prompt=None, instruction="Answer from the passage.")
    model = RAGSequence(encoder, index, tokenizer, generator, num_docs=3, prompt=prompt)
    print(f"{len(index)} passages, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test questions")

    eval_kwargs = dict(decoding="fast", max_new_tokens=8, batch_size=8)
    before = evaluate(model, data.test, **eval_kwargs)
    config = TrainConfig(
        num_epochs=args.epochs, learning_rate=2e-4 if args.embedded else 1e-3, generator_lora=args.embedded,
        question_encoder_lr=1e-4, warmup_ratio=0.1, log_every=2, seed=args.seed,
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="contextflow-synthetic-"), resume=False,
    )
    train = make_dataloader(data.train, batch_size=4, shuffle=True, seed=args.seed)
    val = make_dataloader(data.val, batch_size=8, shuffle=False)
    history = train_rag(model, train, val, config=config)
    after = evaluate(model, data.test, **eval_kwargs)

    rows = [{"metric": k, "before": before[k], "after": after[k]}
            for k in ("loss", "exact_match", "f1", "recall@1", "recall@k", "mrr")]
    print(format_table(rows, title=f"test questions (n={after['num_examples']}, K=3)"))
    question = data.test[0]
    answer = model.generate(questions=[question.question], max_new_tokens=8, decoding="fast")[0]
    print(f"Q: {question.question}\nA: {answer.text!r} (gold: {question.answer!r})")
    print(f"top source: {answer.sources[0][0].id} {answer.sources[0][0].text!r}")
    print(f"metrics and checkpoints in {config.output_dir}")
    return {"before": before, "after": after, "history": history}


if __name__ == "__main__":
    main()
