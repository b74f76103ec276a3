"""Decoding reuses the prompts' KV cache to score candidates (issue 17, item 1).

Every decoding mode scores its candidates by teacher forcing (generation.py). With KV
reuse the prompt part of that pass is taken from the cache `generate` filled, so only
candidate tokens run; the scores must equal the uncached path (`kv_cache.uncached()`,
which is `score_sequences` from scratch) and `model(questions, answers)`.

The tiny generator runs in float64 here so that the tolerance (2e-5, float32 log-prob
sums) can catch an off-by-one position or mask (such a bug moved scores by ~2e-4).
A forward pre-hook records the length of every generator call: with reuse no call
runs more tokens than the longest prompt, without it the rescoring runs prompt + answer.
"""
import math

import pytest
import torch
from tiny import EOS, OFFSET, VOCAB_SIZE, tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.config import PromptConfig, RagConfig
from contextflow_core.kv_cache import kv_reuse_fallback, uncached
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex

MODES = ["thorough", "fast", "concat"]
QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?", "Who?"]
PASSAGES = [  # lengths differ a lot, so the per-passage prompts are left-padded in every batch
    "Zorblat is the capital of Quenia.",
    "Mivo.",
    "The river Mivo flows through Tarsk, past the salt flats, the old mill and the heron marshes of Eldra.",
    "Tarsk was founded in 1204.",
    "Quenia exports blue salt and herons.",
]
TOL = 2e-5
# Every token but the lowercase letters and EOS: the texts then re-encode to exactly the generated ids.
NOT_LETTERS = [i for i in range(VOCAB_SIZE) if i != EOS and not OFFSET + ord("a") <= i <= OFFSET + ord("z")]


def build(generator=None, **config) -> RAGSequence:
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(PASSAGES, enc, ids=[f"p{i}" for i in range(len(PASSAGES))], show_progress=False)
    generator = generator if generator is not None else tiny_generator().double()
    prompt = config.pop("prompt", None)
    return RAGSequence(enc, index, tiny_tokenizer(), generator, prompt=prompt,
                       config=RagConfig(**{"num_docs": 3, **config})).eval()


class Lengths:
    """Input lengths of every forward of the generator's decoder body (generation steps and scoring passes)."""

    def __init__(self, generator):
        base = generator.get_base_model() if hasattr(generator, "get_base_model") else generator
        self.seen: list[int] = []
        self.handle = base.get_decoder().register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.seen.append(int(ids.shape[1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class Forwards:
    """Every forward of the generator's decoder body as (rows, tokens), and which ran after the last `generate`."""

    def __init__(self, rag):
        self.rag, self.seen, self.generate_calls, self._end = rag, [], [], 0

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.seen.append(tuple(ids.shape))

    def _generate(self, **kwargs):
        self.generate_calls.append(tuple(kwargs["input_ids"].shape))
        out = self._own(**kwargs)
        self._end = len(self.seen)
        return out

    @property
    def after_generation(self) -> list[tuple[int, int]]:
        """The scoring passes: forwards after the last `generate` call returned."""
        return self.seen[self._end:]

    def __enter__(self):
        gen = self.rag.generator
        self._own = gen.generate
        gen.generate = self._generate
        self.handle = gen.get_decoder().register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        del self.rag.generator.generate


def prompt_lengths(rag, decoding) -> int:
    _, retrieved = rag.retrieve(QS, rag.config.num_docs)
    if decoding == "concat":
        return max(len(rag.prompts.encode(q, ps).input_ids) for q, ps in zip(QS, retrieved.passages))
    return max(len(e.input_ids) for e in rag.prompts.encode_batch(QS, retrieved.passages))


def both(rag, decoding, **kwargs):
    """(answers with KV reuse, answers without, longest forward with reuse, longest without)."""
    torch.manual_seed(0)
    with Lengths(rag.generator) as cached_calls:
        cached = rag.generate(questions=QS, decoding=decoding, **kwargs)
    torch.manual_seed(0)
    with uncached(), Lengths(rag.generator) as plain_calls:
        plain = rag.generate(questions=QS, decoding=decoding, **kwargs)
    return cached, plain, max(cached_calls.seen), max(plain_calls.seen)


def assert_same(cached, plain):
    for a, b in zip(cached, plain):
        assert a.text == b.text and a.text
        assert a.score == pytest.approx(b.score, abs=TOL)
        assert [p.id for p, _ in a.sources] == [p.id for p, _ in b.sources]
        for (_, wa), (_, wb) in zip(a.sources, b.sources):
            assert wa == pytest.approx(wb, abs=TOL)


def reference(rag, questions, answers):
    with torch.no_grad():
        out = rag(questions=questions, answers=answers)
    return out.doc_logprobs.double(), out.seq_logprobs.double()


SETTINGS = {
    "greedy": dict(max_new_tokens=5),
    "beams": dict(max_new_tokens=5, num_beams=3),
    "beams, 2 returned": dict(max_new_tokens=5, num_beams=3, num_return_sequences=2),
    "sampling, 2 returned": dict(max_new_tokens=4, do_sample=True, top_k=20, num_return_sequences=2),
    "cut at 2 tokens": dict(max_new_tokens=2),
    "forced EOS": dict(max_new_tokens=4, forced_eos_token_id=EOS),
    "letters ending in EOS": dict(max_new_tokens=4, suppress_tokens=NOT_LETTERS, forced_eos_token_id=EOS),
    "sampled letters, 2 returned": dict(max_new_tokens=4, suppress_tokens=NOT_LETTERS, forced_eos_token_id=EOS,
                                        do_sample=True, num_return_sequences=2),
}


def check_reuse(rag, decoding, **kwargs):
    cached, plain, longest_cached, longest_plain = both(rag, decoding, **kwargs)
    assert_same(cached, plain)
    longest_prompt = prompt_lengths(rag, decoding)
    if decoding != "concat":  # concat's per-passage weights are scored from scratch (no cache holds those prompts)
        assert longest_cached <= longest_prompt < longest_plain


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("decoding", MODES)
def test_scores_on_the_cache_equal_the_uncached_path_and_only_candidate_tokens_run(decoding, setting):
    check_reuse(build(), decoding, **SETTINGS[setting])


@pytest.mark.parametrize("decoding", MODES)
def test_micro_batches_split_a_questions_prompts_across_generate_calls(decoding):
    # 2 prompts per generate call and per scoring pass: question 0's 3 passages span two calls
    check_reuse(build(micro_batch_size=2), decoding, max_new_tokens=5, num_beams=3, num_return_sequences=2)


@pytest.mark.parametrize("decoding", MODES)
def test_cached_scores_are_the_models_own_log_likelihoods(decoding):
    rag = build()
    answers = rag.generate(questions=QS, max_new_tokens=5, decoding=decoding, num_beams=2)
    doc, seq = reference(rag, QS, [a.text for a in answers])
    for a, d, s, row in zip(answers, doc, seq, rag.retrieve(QS, 3)[1].passages):
        if decoding == "thorough":
            assert a.score == pytest.approx(float(torch.logsumexp(d + s, 0)), abs=TOL)
        if decoding == "concat":  # the weights are p(z|x,y) from the per-passage scores
            weights = dict((p.id, w) for p, w in a.sources)
            post = torch.softmax(d + s, 0)
            assert [weights[p.id] for p in row] == pytest.approx(post.tolist(), abs=TOL)


@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_answers_generated_with_their_eos_are_scored_from_generations_logits_without_a_pass(micro_batch_size):
    # Each text re-encodes to the ids generated (letters, then EOS): its score is generation's own raw
    # log-probs, so "fast" runs no scoring pass: no forward after generation.
    rag = build(micro_batch_size=micro_batch_size)
    kwargs = SETTINGS["letters ending in EOS"]
    cached, plain, _, _ = both(rag, "fast", **kwargs)
    assert_same(cached, plain)
    with Forwards(rag) as calls:
        rag.generate(questions=QS, decoding="fast", **kwargs)
    assert len(calls.generate_calls) == (1 if micro_batch_size is None else 5)  # 9 prompts
    assert calls.after_generation == [], calls.seen


def test_generation_logits_over_budget_are_not_kept_and_a_scoring_pass_runs(monkeypatch):
    import contextflow_core.kv_cache as kv

    rag = build()
    kwargs = SETTINGS["letters ending in EOS"]
    within = rag.generate(questions=QS, decoding="fast", **kwargs)
    monkeypatch.setattr(kv, "GENERATED_LOGITS_BUDGET", 1024)  # less than 9 prompts x 4 tokens x the vocabulary
    with Forwards(rag) as calls:
        over = rag.generate(questions=QS, decoding="fast", **kwargs)
    assert_same(over, within)
    assert [rows for rows, _ in calls.after_generation] == [len(QS) * 3]  # one scoring pass on the cache


def per_passage_texts(rag, **kwargs) -> list[list[str]]:
    """What plain HF `generate` returns for each question's K per-passage prompts (stripped texts)."""
    _, retrieved = rag.retrieve(QS, rag.config.num_docs)
    batch = rag.prompts.collate(rag.prompts.encode_batch(QS, retrieved.passages))
    out = rag.generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 pad_token_id=rag.generator_tokenizer.pad_token_id, do_sample=False, **kwargs)
    texts = rag.generator_tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    K = rag.config.num_docs
    return [[t.strip() for t in texts[b * K:(b + 1) * K]] for b in range(len(QS))]


@pytest.mark.parametrize("num_docs", [3, 5])
def test_thorough_rescores_only_the_pairs_generation_did_not_produce(num_docs):
    # Every candidate under every passage, less the (candidate, passage that generated it) pairs.
    generator = tiny_generator().double()
    with torch.no_grad():  # weights x8: a generator whose answer depends on the passage
        for name, p in generator.named_parameters():
            if "norm" not in name:
                p.mul_(8)
    rag = build(generator=generator, num_docs=num_docs)
    kwargs = SETTINGS["letters ending in EOS"]
    texts = per_passage_texts(rag, **kwargs)
    expected = sum(len({t for t in row if t}) * num_docs - sum(1 for t in row if t) for row in texts)
    with Forwards(rag) as calls:
        rag.generate(questions=QS, decoding="thorough", **kwargs)
    assert 0 < expected < len(QS) * num_docs * num_docs  # some pairs were generated, some were not
    assert sum(rows for rows, _ in calls.after_generation) == expected  # the scoring pass's rows
    cached, plain, _, _ = both(rag, "thorough", **kwargs)
    assert_same(cached, plain)


@pytest.mark.parametrize("scoring", ["hidden", "full"])
def test_every_scoring_mode_scores_on_the_cache(scoring):
    rag = build(scoring=scoring)
    cached, plain, longest_cached, longest_plain = both(rag, "thorough", max_new_tokens=5)
    assert_same(cached, plain)
    assert longest_cached < longest_plain


def test_peft_wrapped_generator_scores_on_the_cache():
    peft = pytest.importorskip("peft")
    generator = tiny_generator().double()
    wrapped = peft.get_peft_model(generator, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # adapters that change the scores
    rag = build(generator=wrapped)
    assert kv_reuse_fallback(rag.generator) is None
    cached, plain, longest_cached, longest_plain = both(rag, "thorough", max_new_tokens=5, num_beams=2)
    assert_same(cached, plain)
    assert longest_cached < longest_plain
    with Forwards(rag) as calls:  # greedy: the shared prefix runs through the adapters too
        rag.generate(questions=QS, decoding="fast", max_new_tokens=5)
    assert calls.seen[0][0] == 1
    assert_same(*both(rag, "fast", max_new_tokens=5)[:2])


def test_a_prompt_cut_for_the_answer_is_scored_from_scratch():
    long = build()
    _, retrieved = long.retrieve(QS, 3)
    longest = max(len(e.input_ids) for e in long.prompts.encode_batch(QS, retrieved.passages))
    rag = build(prompt=PromptConfig(max_length=longest + 2))  # the prompts fit; prompt + answer + EOS does not
    cached, plain, _, _ = both(rag, "thorough", max_new_tokens=5)
    assert_same(cached, plain)
    encoded = rag.prompts.encode_batch(QS, retrieved.passages, [a.text for a in cached])
    assert any(e.passage_tokens_cut for e in encoded)  # the case really happens
    doc, seq = reference(rag, QS, [a.text for a in cached])
    for a, d, s in zip(cached, doc, seq):
        assert a.score == pytest.approx(float(torch.logsumexp(d + s, 0)), abs=TOL)
    concat, concat_plain, _, _ = both(rag, "concat", max_new_tokens=5)  # its per-passage prompts, cut alike
    assert_same(concat, concat_plain)


def test_fallbacks_are_named_and_exact():
    rag = build()
    assert kv_reuse_fallback(rag.generator) is None
    assert "use_cache" in kv_reuse_fallback(rag.generator, {"use_cache": False})
    with uncached():
        assert "turned off" in kv_reuse_fallback(rag.generator)
    assert kv_reuse_fallback(rag.generator) is None  # the switch is scoped to the block
    cached = rag.generate(questions=QS, max_new_tokens=4, decoding="fast", use_cache=False)
    with uncached():
        plain = rag.generate(questions=QS, max_new_tokens=4, decoding="fast")
    assert_same(cached, plain)


def test_a_sliding_window_cache_is_not_reused_and_scores_stay_exact():
    from tiny import PAD, VOCAB_SIZE
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=8, pad_token_id=PAD,
                        eos_token_id=EOS, max_position_embeddings=1024)
    generator = MistralForCausalLM(cfg).double().eval()
    generator.generation_config.pad_token_id, generator.generation_config.eos_token_id = PAD, EOS
    rag = build(generator=generator)
    cached, plain, longest_cached, longest_plain = both(rag, "fast", max_new_tokens=4)
    assert_same(cached, plain)
    assert longest_cached == longest_plain  # scored from scratch: the window would have dropped prompt keys


@pytest.mark.embedded
def test_embedded_smollm2_scores_on_the_cache_equal_the_uncached_path():
    from contextflow_core.data import make_synthetic

    data = make_synthetic(num_entities=12, seed=0)
    rag = RAGSequence.from_defaults([p.text for p in data.passages], ids=[p.id for p in data.passages],
                                    titles=[p.title for p in data.passages], num_docs=3)
    questions = [e.question for e in data.test[:2]]
    for decoding in MODES:
        cached = rag.generate(questions=questions, max_new_tokens=8, decoding=decoding)
        with uncached():
            plain = rag.generate(questions=questions, max_new_tokens=8, decoding=decoding)
        for a, b in zip(cached, plain):
            assert a.text == b.text
            assert math.isfinite(a.score) and a.score == pytest.approx(b.score, abs=1e-4)
        if decoding == "thorough":
            doc, seq = reference(rag, questions, [a.text for a in cached])
            for a, d, s in zip(cached, doc, seq):
                assert a.score == pytest.approx(float(torch.logsumexp(d + s, 0)), abs=1e-4)


# -- the prompts' common frame is prefilled once --------------------------------------------
@pytest.mark.parametrize("decoding", MODES)
def test_the_prompts_common_prefix_is_prefilled_once_and_scores_stay_exact(decoding):
    rag = build()
    with Forwards(rag) as calls:
        rag.generate(questions=QS, decoding=decoding, max_new_tokens=4)
    (rows, length), = calls.generate_calls
    (prefix_rows, h), (prefill_rows, rest) = calls.seen[:2]
    if decoding == "concat":  # 3 prompts, one per question: their common frame is shared too
        assert rows == len(QS)
    assert prefix_rows == 1 and h >= 4 and (prefill_rows, rest) == (rows, length - h)
    _, retrieved = rag.retrieve(QS, 3)
    encoded = ([rag.prompts.encode(q, ps) for q, ps in zip(QS, retrieved.passages)] if decoding == "concat"
               else rag.prompts.encode_batch(QS, retrieved.passages))
    prompts = [e.input_ids for e in encoded]
    assert all(p[:h] == prompts[0][:h] for p in prompts)  # the frame really is common
    assert len({p[h] for p in prompts}) > 1  # and no longer
    cached, plain, _, _ = both(rag, decoding, max_new_tokens=4)
    assert_same(cached, plain)


@pytest.mark.parametrize("kwargs", [dict(num_beams=2), dict(do_sample=True, num_return_sequences=2)],
                         ids=["beams", "2 returned"])
def test_no_prefix_pass_when_rows_expand_per_prompt(kwargs):
    rag = build()
    with Forwards(rag) as calls:
        rag.generate(questions=QS, decoding="fast", max_new_tokens=3, **kwargs)
    assert calls.seen[0][0] > 1  # the first forward is generate's own prefill of every row


def test_identical_prompts_share_all_but_their_last_token_and_score_as_uncached():
    rag = build()
    questions = ["Who?", "Who?"]
    with Forwards(rag) as calls:
        cached = rag.generate(questions=questions, decoding="concat", max_new_tokens=4)
    (rows, length), = calls.generate_calls
    assert calls.seen[:2] == [(1, length - 1), (2, 1)]
    with uncached():
        plain = rag.generate(questions=questions, decoding="concat", max_new_tokens=4)
    assert cached[0].text == plain[0].text == cached[1].text
    assert cached[0].score == pytest.approx(plain[0].score, abs=TOL)


def test_a_streamer_sees_the_prompts_as_built_so_no_prefix_pass_runs():
    from transformers.generation.streamers import BaseStreamer

    class Prompts(BaseStreamer):
        def __init__(self):
            self.first = None

        def put(self, value):
            self.first = value.tolist() if self.first is None else self.first

        def end(self):
            pass

    rag = build()
    streamer = Prompts()
    with Forwards(rag) as calls:
        rag.generate(questions=QS[:1], decoding="fast", max_new_tokens=3, streamer=streamer)
    assert calls.seen[0][0] == 3  # generate's own prefill of the 3 prompts
    _, retrieved = rag.retrieve(QS[:1], 3)
    prompts = [e.input_ids for e in rag.prompts.encode_batch(QS[:1], retrieved.passages)]
    pad = rag.generator_tokenizer.pad_token_id
    assert [[t for t in row[len(row) - len(p):]] for row, p in zip(streamer.first, prompts)] == prompts
    assert all(t == pad for row, p in zip(streamer.first, prompts) for t in row[:len(row) - len(p)])


def test_a_generation_config_cache_implementation_is_left_to_generate():
    rag = build()
    with uncached():
        plain = rag.generate(questions=QS, decoding="fast", max_new_tokens=4)
    rag.generator.generation_config.cache_implementation = "dynamic"
    with Forwards(rag) as calls:
        cached = rag.generate(questions=QS, decoding="fast", max_new_tokens=4)
    assert calls.seen[0][0] == len(QS) * 3  # generate's own prefill of every row, no prefix pass
    assert_same(cached, plain)


@pytest.mark.parametrize("name", ["output_logits", "output_scores", "return_dict_in_generate"])
def test_generate_outputs_decoding_sets_itself_are_refused_not_overridden(name):
    from contextflow_core.serving import RequestBatcher

    rag = build()
    with pytest.raises(TypeError, match=rf"{name!r} is set by ContextFlow; decoding"):
        rag.generate(questions=QS[:1], max_new_tokens=2, **{name: False})
    with RequestBatcher(rag) as batcher, pytest.raises(TypeError, match=rf"{name!r} is set by ContextFlow"):
        batcher.submit(QS[0], max_new_tokens=2, **{name: True})


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2",
                                        "granite", "cohere", "gpt2"])
@pytest.mark.parametrize("decoding", ["thorough", "concat"])
def test_reuse_is_exact_on_every_architecture(model_type, decoding):
    # The shared prefix, the generation logits and the prompt cache together, against scoring from scratch,
    # on architectures whose positions, embeddings and logits differ (RoPE variants, learned positions,
    # embedding scaling, soft-capping, logit scales).
    from test_scoring_exact import tiny_lm

    full_attention = {"mistral": {"sliding_window": None}, "gemma2": {"layer_types": ["full_attention"] * 2}}
    generator = tiny_lm(model_type, **full_attention.get(model_type, {}))  # sliding windows: never reused
    if model_type != "gemma2":  # soft-capped attention runs eager only, and eager in float64 turns
        generator = generator.double()  # fully padded rows to NaN: gemma2 stays float32 (TOL still holds)
        generator.config._attn_implementation = "sdpa"
    rag = build(generator=generator)
    with Forwards(rag) as calls:
        rag.generate(questions=QS, decoding=decoding, max_new_tokens=4)
    assert calls.seen[0][0] == 1  # the shared prefix pass ran
    check_reuse(rag, decoding, **SETTINGS["letters ending in EOS"])
    check_reuse(rag, decoding, max_new_tokens=4)


def test_concat_scores_each_passage_alone_on_prompts_prefilled_once_not_from_scratch():
    # The weights p(z|x,y) need the answer under each passage alone: those prompts are prefilled (their
    # common frame once), then only the answers run on them; the joint answer comes from generation's logits.
    rag = build()
    kwargs = SETTINGS["letters ending in EOS"]
    with Forwards(rag) as calls:
        answers = rag.generate(questions=QS, decoding="concat", **kwargs)
    S, K = sum(1 for a in answers if a.text), 3
    _, retrieved = rag.retrieve(QS, K)
    longest = max(len(e.input_ids) for e in rag.prompts.encode_batch(QS, retrieved.passages))
    (one, h), (rows, rest), (scored, T) = calls.after_generation
    assert (one, rows, scored) == (1, S * K, S * K) and rest == longest - h and T <= kwargs["max_new_tokens"]
    assert_same(*both(rag, "concat", **kwargs)[:2])
