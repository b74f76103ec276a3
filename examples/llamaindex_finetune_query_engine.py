"""Fine-tune ContextFlow on the nodes of a LlamaIndex index and query it as a LlamaIndex engine.

What it shows:
    1. a `VectorStoreIndex` as a LlamaIndex user has it (here over a synthetic
       corpus of invented facts, with LlamaIndex's `MockEmbedding` standing in
       for your embedding model: ContextFlow re-embeds the nodes with its own
       question encoder);
    2. QA data in LlamaIndex's id-keyed layout (`EmbeddingQAFinetuneDataset`:
       queries, corpus, relevant_docs) plus the answers it lacks, keyed by query id;
    3. `finetune_from_index`: pull the nodes, train retriever and generator jointly;
    4. the trained model back in LlamaIndex: `query_engine.query` (sources scored by
       p(z|x,y)), streaming, `retriever.retrieve`, and the generator as an LLM.

By default the models are tiny and random (seconds on a CPU; the answers are
gibberish, the plumbing is real). ``--embedded`` uses the embedded defaults
(all-MiniLM-L6-v2 + SmolLM2-135M-Instruct; minutes on a CPU).

Run:
    python examples/llamaindex_finetune_query_engine.py [--embedded] [--entities 8] [--epochs 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import TextNode

from contextflow_core.config import TrainConfig
from contextflow_core.data.synthetic import make_synthetic
from contextflow_integrations.llamaindex import finetune_from_index


def tiny_models(seed: int = 0):
    """A tiny random BERT question encoder, Llama generator and byte-level tokenizer (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from contextflow_core.models.encoders import TextEncoder

    specials = ["<pad>", "<eos>", "<bos>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({char: b + len(specials) for b, char in bytes_to_unicode().items()})
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", model_max_length=512)
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=512, pad_token_id=0))
    encoder = TextEncoder(bert, tokenizer, pooling="mean", max_length=128, name="tiny-bert")
    generator = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2))
    return {"encoder": encoder, "generator": generator, "tokenizer": tokenizer}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="use the embedded default models")
    parser.add_argument("--entities", type=int, default=8, help="invented entities in the corpus")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-docs", type=int, default=3, help="K passages per question")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    # 1. The user's LlamaIndex index: nodes with ids, text and metadata (the title among it).
    data = make_synthetic(num_entities=args.entities, seed=0)
    nodes = [TextNode(id_=p.id, text=p.text, metadata={"title": p.title, **p.metadata}) for p in data.passages]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))

    # 2. QA in the EmbeddingQAFinetuneDataset layout, and the answers it has no field for.
    qa = {
        "queries": {f"q{i}": ex.question for i, ex in enumerate(data.train)},
        "corpus": {n.node_id: n.text for n in nodes},
        "relevant_docs": {f"q{i}": ex.gold_ids for i, ex in enumerate(data.train)},
    }
    answers = {f"q{i}": ex.answer for i, ex in enumerate(data.train)}

    # 3. Pull the nodes, build the ContextFlow index, train jointly.
    models = {} if args.embedded else tiny_models()
    config = TrainConfig(num_epochs=args.epochs, learning_rate=5e-5 if args.embedded else 3e-3,
                         progress=False, plot=False, log_every=1, seed=0)
    result = finetune_from_index(index, qa, answers=answers, train_config=config, num_docs=args.num_docs,
                                 query_engine_kwargs={"max_new_tokens": 16}, **models)
    losses = [r["loss"] for r in result.history.train]
    print(f"pulled {len(result.model.index)} nodes; trained {result.history.global_step} steps, "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    before, after = result.retrieval_before, result.retrieval_after
    print(f"recall@{after['k']} on the {after['num_questions']} training questions: "
          f"{before['recall@k']:.2f} -> {after['recall@k']:.2f}")

    # 4. The trained model as LlamaIndex components.
    question = data.train[0].question
    response = result.query_engine.query(question)
    print(f"\nQ: {question}\nA: {response.response!r}  (log p(y|x) = {response.metadata['score']:.2f})")
    for source in response.source_nodes:
        print(f"   p(z|x,y) = {source.score:.3f}  [{source.node_id}] {source.node.text}")

    streaming = result.query_engine.model_copy(update={"streaming": True, "decoding": "concat"})
    print("streamed (concat decoding): ", end="")
    streaming.query(question).print_response_stream()
    print()

    for hit in result.retriever.retrieve(question):
        print(f"retrieved [{hit.node_id}] score {hit.score:.3f}: {hit.node.text}")
    print(f"LLM alone: {result.llm(max_new_tokens=12).complete(question).text!r}")
    if not args.embedded:
        print("(tiny random models: the answers are gibberish by design; --embedded gives real ones)")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
