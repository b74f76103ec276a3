r"""RAGSequence: the marginalised RAG-Sequence model for decoder-only LMs.

Boundary: runs the question encoder, the index and the generator; the maths is
in `loss.py`, text-to-ids in `prompts.py`, generator scoring in `scoring.py`,
decoding in `generation.py`, files in `serialization.py`.

.. math::
    p(y|x) = \sum_k p_\eta(z_k|x)\, p_\theta(y | f(x, z_k)), \qquad
    p_\eta(z_k|x) = \mathrm{softmax}_k(q(x)\cdot d(z_k) / \tau)

Top-K ids come from the index without gradient; the scores q . d_k are then
recomputed from the live question embedding q, so the loss reaches the
question encoder. All B*K generator sequences run as one left-padded batch
(micro-batched on request), with logits only at answer positions.

Shapes: B questions, K passages, D embedding size.

Example:
    >>> rag = RAGSequence(question_encoder=enc, retriever=index,
    ...                   generator_tokenizer=tok, generator=lm)       # doctest: +SKIP
    >>> out = rag(questions=["Who founded Tarsk?"], answers=["Ilo"])  # doctest: +SKIP
    >>> out.loss.backward()                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import PromptConfig, RagConfig, default_temperature
from .loss import doc_log_probs
from .models.encoders import TextEncoder
from .models.loading import ensure_pad_token
from .modes import eval_mode
from .objectives import OBJECTIVES, Objective
from .prompts import PromptBuilder
from .retrieval import DocumentIndex, Retriever, as_retriever
from .retrieval.checks import check_finite_embeddings
from .retrieval.store import is_backend
from .scoring import score_sequences
from .store_rag import attach_store
from .types import Passage, RagAnswer, RagOutput, Retrieved
from .validation import as_int


def wrap_question_encoder(question_encoder, tokenizer=None) -> TextEncoder:
    """Accept a TextEncoder or a bare HF encoder (DPR -> pooler output, else mean pooling)."""
    if isinstance(question_encoder, TextEncoder):
        if tokenizer is not None and question_encoder.tokenizer is None:
            question_encoder.tokenizer = tokenizer
        return question_encoder
    if not isinstance(question_encoder, nn.Module):
        raise TypeError(
            f"question_encoder: expected a TextEncoder or a HF encoder model, got {type(question_encoder).__name__}"
        )
    model_type = getattr(getattr(question_encoder, "config", None), "model_type", "")
    pooling = "pooler" if model_type == "dpr" else "mean"
    return TextEncoder(question_encoder, tokenizer, pooling=pooling)


class RAGSequence(nn.Module):
    """RAG-Sequence over a FAISS index with a decoder-only generator.

    Built directly, the model keeps the modes of the modules it is given;
    `from_pretrained` and `from_defaults` return it in `eval()` (as HF does).
    `generate` runs in eval and restores every sub-module's own mode.

    Args:
        question_encoder: `TextEncoder` (or a HF encoder such as `DPRQuestionEncoder`).
        retriever: `Retriever`, `DocumentIndex`, or a vector-store backend
            (`contextflow_core.retrieval.store.VectorStoreBackend`) holding the passages.
        generator_tokenizer: The generator's tokenizer (pad token set from EOS if missing).
        generator: A HF causal LM (plain, PEFT-wrapped or quantized).
        prompt: `PromptConfig` for f(x, z).
        num_docs: K; overrides `config.num_docs` when given.
        config: `RagConfig` (temperature, freezing, scoring mode, micro-batching).
        question_encoder_tokenizer: Tokenizer for a bare HF question encoder.
        context_encoder: Passage encoder (DPR-style two towers); None shares the
            question encoder. Used live (with gradient) for the K retrieved passages when
            `config.train_context_encoder`, and by index refresh. Over a store backend,
            None means a frozen copy of the starting question encoder (see `store_rag`).
        store_check: Over a store backend, check that its vectors come from the passage
            encoder (`retrieval.space_check.check_embedding_space`); False skips the check.
    """

    #: The objectives this model implements (`RagConfig.objective` -> loss); see `objectives.py`.
    objectives: dict[str, Objective] = OBJECTIVES

    def __init__(
        self,
        question_encoder,
        retriever: Retriever | DocumentIndex,
        generator_tokenizer,
        generator: nn.Module,
        *,
        prompt: PromptConfig | None = None,
        num_docs: int | None = None,
        config: RagConfig | None = None,
        question_encoder_tokenizer=None,
        context_encoder: TextEncoder | None = None,
        store_check: bool = True,
    ) -> None:
        super().__init__()
        self.question_encoder = wrap_question_encoder(question_encoder, question_encoder_tokenizer)
        # None: the question encoder also embeds passages (siamese, as the embedded MiniLM).
        self._context_encoder = context_encoder
        self.retriever = as_retriever(retriever)
        self.generator = generator
        self.generator_tokenizer = ensure_pad_token(generator_tokenizer, generator)
        self.config = config or RagConfig()
        if num_docs is not None:
            self.config = RagConfig(**{**self.config.__dict__, "num_docs": num_docs})
        if self.config.temperature is None:  # resolved once, so config (and a saved model) shows the value used
            self.config = RagConfig(**{**self.config.__dict__, "temperature": self.temperature})
        self.prompts = PromptBuilder(self.generator_tokenizer, prompt)
        self.check_objective(self.config.objective)
        self._check_dims()
        attach_store(self, store_check)  # over a store: frozen passage encoder, embedding-space check
        if self.config.gradient_checkpointing:
            hf_generator: Any = generator  # a HF PreTrainedModel (or a peft wrapper)
            hf_generator.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _check_dims(self) -> None:
        enc_dim, index_dim = self.question_encoder.dim, self.index.dim
        if enc_dim != index_dim and self.store is not None:
            raise ValueError(
                f"question_encoder: embedding size {enc_dim} differs from the dimension {index_dim} of the store "
                f"{self.store.name!r} (embedded with {self.index.encoder_name!r}); "
                "use the encoder that embedded the store "
                "(e.g. contextflow_integrations.stores.encoder_from_embeddings) or the copy path"
            )
        if enc_dim != index_dim:
            raise ValueError(
                f"question_encoder: embedding size {enc_dim} differs from the index's {index_dim} "
                f"(index built with {self.index.encoder_name!r}); use the encoder the index was built with "
                "or rebuild the index"
            )

    def check_objective(self, objective: str) -> None:
        """Refuse, by name, an objective this model does not implement."""
        if objective not in self.objectives:
            raise ValueError(
                f"objective: {type(self).__name__} implements {sorted(self.objectives)}, got {objective!r}; "
                "choose one of those (RagConfig.objective / TrainConfig.objective) or use a model that has it"
            )

    @property
    def context_encoder(self) -> TextEncoder:
        """The encoder that embeds passages (the question encoder unless a separate one was given)."""
        return self._context_encoder if self._context_encoder is not None else self.question_encoder

    @property
    def temperature(self) -> float:
        """tau of p(z|x): `config.temperature`, or the question encoder's default when that is None."""
        t = self.config.temperature
        return default_temperature(self.question_encoder) if t is None else t

    @property
    def index(self):
        """The DocumentIndex, or over a store its `StoreIndex` view (len, dim, search)."""
        return self.retriever.index

    @property
    def store(self):
        """The vector-store backend retrieved from (None over a DocumentIndex)."""
        return self.retriever.store

    @property
    def prompt_config(self) -> PromptConfig:
        """The `PromptConfig` that renders f(x, z)."""
        return self.prompts.config

    # -- retrieval ----------------------------------------------------------
    def resolve_num_docs(self, num_docs: int | None) -> int:
        """K for a call: `num_docs`, or the model's `RagConfig.num_docs` when None (checked positive)."""
        return as_int("num_docs", self.config.num_docs if num_docs is None else num_docs)  # numpy ints too

    def questions_from_ids(self, input_ids: torch.Tensor, attention_mask=None) -> list[str]:
        """Seed API: recover question text from question-encoder token ids."""
        tok = self.question_encoder.tokenizer
        if tok is None:
            raise ValueError(
                "input_ids: the question encoder has no tokenizer to decode them with; pass "
                "questions=[...] or question_encoder_tokenizer= when building RAGSequence"
            )
        if attention_mask is not None:
            rows = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask, strict=True)]
        else:
            rows = list(input_ids)
        return [tok.decode(r, skip_special_tokens=True).strip() for r in rows]

    def _questions(self, questions, input_ids, attention_mask) -> list[str]:
        if questions is None and input_ids is None:
            raise ValueError("questions: expected a list of question strings (or input_ids=), got neither")
        if questions is None:
            questions = self.questions_from_ids(input_ids, attention_mask)
        if isinstance(questions, str):
            questions = [questions]
        questions = list(questions)
        if not questions:
            raise ValueError("questions: expected at least one question, got an empty list")
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"questions[{i}]: expected non-empty text, got {q!r}")
        return questions

    @staticmethod
    def _answers(answers, questions: list[str]) -> list[str]:
        answers = [answers] if isinstance(answers, str) else list(answers)
        if len(answers) != len(questions):
            raise ValueError(f"answers: expected one answer per question ({len(questions)}), got {len(answers)}")
        return answers

    def retrieve(self, questions: Sequence[str], num_docs: int | None = None) -> tuple[torch.Tensor, Retrieved]:
        """Top-K passages and log p_eta(z|x) (B, K), with gradient into the question encoder.

        The scores q . d_k and their log-softmax are computed in float32 with autocast
        off (bf16 scores would move log p(z|x) by ~0.08 nats at tau = 0.05); the
        question encoder itself runs under whatever autocast is active.
        """
        k = self.resolve_num_docs(num_docs)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_retriever):
            q = self.question_encoder.embed(list(questions))  # (B, D)
        check_finite_embeddings("question embeddings", q)  # before the index search; train_rag skips the step
        retrieved = self.retriever.candidates(questions, q.detach().float().cpu(), k)
        if self.config.train_context_encoder:  # live passage embeddings, with gradient
            texts = [p.text for row in retrieved.passages for p in row]
            d = self.context_encoder.embed(texts).view(len(questions), -1, q.shape[-1])  # (B, K, D)
            check_finite_embeddings("passage embeddings", d)
        else:
            d = retrieved.embeddings.to(device=q.device, dtype=q.dtype)  # (B, K, D) stored
        with torch.autocast(q.device.type, enabled=False):  # fp32 scores even under mixed precision
            scores = torch.einsum("bd,bkd->bk", q.float(), d.float())  # (B, K) live scores
            doc_lp = doc_log_probs(scores, self.temperature)
        if self.config.freeze_retriever:
            doc_lp = doc_lp.detach()
        return doc_lp, retrieved

    # -- generator scoring --------------------------------------------------
    def score(
        self, questions: Sequence[str], passages: Sequence[Sequence[Passage]], answers: Sequence[str]
    ) -> torch.Tensor:
        """log p_theta(answer_b | f(question_b, passage_bk)), (B, K)."""
        encoded = self.prompts.encode_batch(questions, passages, answers)
        frozen = self.config.freeze_generator
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # frozen: keep no activations
            flat = score_sequences(
                self.generator,
                encoded,
                self.prompts.collate,
                mode=self.config.scoring,
                micro_batch_size=self.config.micro_batch_size,
                length_normalize=self.config.length_normalize,
            )
        seq_lp = flat.view(len(questions), -1)
        return seq_lp.detach() if frozen else seq_lp

    def forward(
        self,
        questions: Sequence[str] | None = None,
        answers: Sequence[str] | None = None,
        num_docs: int | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> RagOutput:
        """Retrieve, score and marginalise; `loss` is set when answers are given."""
        questions = self._questions(questions, input_ids, attention_mask)
        doc_lp, retrieved = self.retrieve(questions, num_docs)
        if answers is None:
            return RagOutput(None, doc_lp, None, retrieved.passages)
        answers = self._answers(answers, questions)
        loss, seq_lp = self.objectives[self.config.objective](self, questions, doc_lp, retrieved.passages, answers)
        return RagOutput(loss, doc_lp, seq_lp, retrieved.passages)

    # -- decoding and files -------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        questions: Sequence[str] | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_docs: int | None = None,
        max_new_tokens: int = 128,
        decoding: str = "thorough",
        **generate_kwargs,
    ) -> list[RagAnswer]:
        """RAG-Sequence decoding; see `generation.DECODERS` for the modes.

        Runs in eval mode and restores every sub-module's own mode afterwards; concurrent
        callers sharing the generator or an encoder take turns (see `modes.eval_mode`).

        Each answer's `score` is log p(y|x) of its text followed by EOS, scored by teacher
        forcing exactly as `model(questions, answers)` does, in every decoding mode: sampling
        settings (`temperature`, `top_p`, `repetition_penalty`, ...) change which text is
        generated, not its score, and an answer cut by `max_new_tokens` keeps its EOS term.
        An empty candidate (no text once special tokens are skipped and whitespace stripped,
        e.g. EOS generated first) is never chosen; when every candidate of a question is
        empty its answer is `RagAnswer(text="", score=float("-inf"))` with sources weighted
        by p(z|x).
        """
        from .generation import rag_generate

        questions = self._questions(questions, input_ids, attention_mask)
        return rag_generate(
            self, questions, self.resolve_num_docs(num_docs), max_new_tokens, decoding, **generate_kwargs
        )

    def inference(self):
        """Context manager: this model's locks held and every module in eval, own modes restored after."""
        return eval_mode(self, self.generator, self.question_encoder, self._context_encoder)

    def batcher(self, *, max_batch_size: int = 16, max_wait_ms: float = 0.0):
        """This model's shared `serving.RequestBatcher` with these settings (made on first use).

        Concurrent callers (threads, asyncio tasks, the LangChain / LlamaIndex adapters) that
        submit single questions to it are answered in shared batched `generate` calls, with the
        same answers as one call each. For a batcher of your own, with its own lifetime, use
        ``RequestBatcher(model, ...)`` (a context manager).

        Example:
            >>> answer = rag.batcher().generate("Who founded Tarsk?", max_new_tokens=16)  # doctest: +SKIP
        """
        from .serving import shared_batcher

        return shared_batcher(self, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)

    def save_pretrained(self, directory, *, save_base: bool = False) -> None:
        """Save to a new/empty folder or over a saved RAG model (never over other files); see `serialization`."""
        from .serialization import save_rag

        save_rag(self, directory, save_base=save_base)

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> RAGSequence:
        """Load a model saved by `save_pretrained`, in `eval()` (call `.train()` to fine-tune).

        A model saved over a store backend needs `store=<a backend over it>` (see `serialization.load_rag`).
        """
        from .serialization import load_rag

        return load_rag(cls, directory, **kwargs).eval()

    @classmethod
    def from_defaults(
        cls, texts_or_index, ids=None, *, titles=None, metadatas=None, reader: bool = True, **kwargs
    ) -> RAGSequence:
        """The embedded defaults (all-MiniLM-L6-v2 + SmolLM2-135M-Instruct) over `texts_or_index`, in `eval()`.

        Args:
            texts_or_index: Passage texts, or a `DocumentIndex` / `Retriever` / store backend built with the
                embedded encoder.
            ids, titles, metadatas: Per-passage ids, titles and metadata (texts only).
            reader: Merge the shipped reader adapter into the generator (default), so it answers
                from the passage with the answer span; False: the raw instruct model. See
                `models.default_generator`.
            **kwargs: Passed to `RAGSequence` (`num_docs`, `config`, `prompt`, ...).

        Raises:
            FileNotFoundError: `reader=True` but the reader adapter is not installed.
        """
        from .models.defaults import default_generator, default_question_encoder

        generator, tokenizer = default_generator(reader=reader)  # first: a missing reader fails before indexing
        encoder = default_question_encoder()
        if isinstance(texts_or_index, (DocumentIndex, Retriever)) or is_backend(texts_or_index):
            index = texts_or_index
        else:
            index = DocumentIndex.from_texts(list(texts_or_index), encoder, ids=ids, titles=titles, metadatas=metadatas)
        return cls(
            question_encoder=encoder, retriever=index, generator_tokenizer=tokenizer, generator=generator, **kwargs
        ).eval()
