"""Fine-tune ContextFlow on an existing LangChain vector store, then swap it into the same chain.

1. An existing LangChain app: documents in an `InMemoryVectorStore` and an LCEL chain
   ``{context: retriever | format_docs, question} | prompt | chat model | parser``.
2. `finetune_from_vectorstore(store, qa_pairs)`: ContextFlow pulls every document and
   id out of the store, indexes them with its question encoder and trains retriever
   and generator jointly on the QA pairs (RAG-Sequence marginal likelihood, no
   retrieval labels).
3. The same chain with the fine-tuned `ContextFlowRetriever` and `ChatContextFlow`
   swapped in, and the RAG-Sequence Runnable `ContextFlowRAG` (answer + sources).

The data are invented facts (`make_synthetic`), so no pretrained model knows them.
The store's embedding is LangChain's `DeterministicFakeEmbedding`, standing in for
whatever embedding your store already uses: ContextFlow re-encodes the documents.

Run:
    python examples/langchain_finetune_and_chain.py             # tiny random models, ~30 s on CPU
    python examples/langchain_finetune_and_chain.py --embedded  # all-MiniLM-L6-v2 + SmolLM2-135M-Instruct

Tiny random models only show the plumbing and a falling loss; their answers are noise.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnablePassthrough  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from contextflow_core.config import TrainConfig  # noqa: E402
from contextflow_core.data.synthetic import make_synthetic  # noqa: E402
from contextflow_core.evaluation import qa_metrics  # noqa: E402
from contextflow_integrations.langchain import ChatContextFlow, finetune_from_vectorstore  # noqa: E402

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question from the context. Reply with the answer only."),
    ("human", "Context:\n{context}\n\nQuestion: {question}"),
])


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


def make_chain(retriever, chat_model):
    """The app's chain; only the retriever and the chat model change."""
    inputs = {"context": retriever | format_docs, "question": RunnablePassthrough()}
    return inputs | PROMPT | chat_model | StrOutputParser()


def tiny_models(seed: int = 0):
    """A random 1-layer BERT question encoder and 2-layer Llama generator over a byte tokenizer (no download)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from contextflow_core.models import TextEncoder

    specials = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({char: b + len(specials) for b, char in bytes_to_unicode().items()})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, pad_token_id=0), add_pooling_layer=False)
    encoder = TextEncoder(bert, tokenizer, pooling="mean", max_length=64, name="tiny-bert")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1, bos_token_id=1))
    llama.generation_config.pad_token_id, llama.generation_config.eos_token_id = 0, 1
    return encoder, llama, tokenizer


def answers(chain, questions: list[str]) -> list[str]:
    return [text.strip() for text in chain.batch(questions)]


def show(title: str, questions, predicted, gold) -> None:
    scores = qa_metrics(predicted, gold)
    print(f"\n== {title}: exact match {scores['exact_match']:.2f}, F1 {scores['f1']:.2f}")
    for q, p, g in list(zip(questions, predicted, gold))[:3]:
        print(f"  Q: {q}\n     predicted {p!r:.60}   gold {g!r}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedded", action="store_true", help="use the embedded MiniLM + SmolLM2 defaults")
    parser.add_argument("--entities", type=int, default=None, help="invented entities (default 6 tiny, 40 embedded)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    # 1. The existing LangChain app: a vector store and a chain over it.
    data = make_synthetic(num_entities=args.entities or (40 if args.embedded else 6), seed=0)
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=64))
    store.add_documents([Document(page_content=p.text, metadata={"title": p.title, **p.metadata}, id=p.id)
                         for p in data.passages])
    questions, gold = [ex.question for ex in data.train], [ex.answer for ex in data.train]
    if args.embedded:
        from contextflow_core.models import default_generator

        generator, tokenizer = default_generator()
        parts = {"generator": generator, "tokenizer": tokenizer}  # question encoder: the embedded default
        config = TrainConfig(num_epochs=args.epochs, learning_rate=5e-5, progress=True, plot=False)
    else:
        encoder, generator, tokenizer = tiny_models()
        parts = {"encoder": encoder, "generator": generator, "tokenizer": tokenizer}
        config = TrainConfig(num_epochs=args.epochs, learning_rate=2e-2, progress=False, plot=False, log_every=1)
    chat = ChatContextFlow(generator=generator, tokenizer=tokenizer, max_tokens=16)
    before = make_chain(store.as_retriever(search_kwargs={"k": 2}), chat)
    show("before: store retriever + base generator", questions, answers(before, questions), gold)

    # 2. Fine-tune ContextFlow on the store's documents (the generator is trained in place).
    result = finetune_from_vectorstore(store, data.train, val_pairs=data.val or None, train_config=config,
                                       batch_size=4, num_docs=2, k=2, max_new_tokens=16, **parts)
    history, n = result.history, max(1, len(result.history.train) // args.epochs)  # ~ records per epoch
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (history.train[:n], history.train[-n:]))
    print(f"\n== training: {history.global_step} steps, {len(result.documents)} documents indexed; "
          f"mean training loss, first epoch -> last epoch: {first:.3f} -> {last:.3f}")
    if history.eval:
        print("   validation loss per evaluation: " + ", ".join(f"{r['loss']:.3f}" for r in history.eval))

    # 3. The same chain with ContextFlow swapped in, and the RAG-Sequence Runnable.
    after = make_chain(result.retriever, result.chat_model(max_tokens=16))
    show("after: ContextFlow retriever + fine-tuned generator", questions, answers(after, questions), gold)
    rag_out = result.chain.batch(questions)
    show("after: ContextFlowRAG (RAG-Sequence)", questions, [o["answer"] for o in rag_out], gold)
    top = rag_out[0]["source_documents"][0]
    print(f"  top source of Q1: {top.id} (weight {top.metadata['weight']:.2f}): {top.page_content!r}")


if __name__ == "__main__":
    main()
