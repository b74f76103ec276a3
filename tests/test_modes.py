"""Modes and trainable sets (issue 13, items 6-9): the same answer every time, training trains what it says.

- inference runs in eval and gives every sub-module its own mode back; loaded models are in eval;
  concurrent LangChain calls on one model match sequential ones; frozen sides train in eval;
- retriever scores are float32 under autocast;
- LoRA encoders keep their base frozen, staged runs keep training adapters, flags come back;
- the objective implies the train mode; RAGToken honours the objective.
"""
import ast
import dataclasses
import inspect
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer
from train_tiny import PASSAGES, QA, all_params, build_rag, loaders, tiny_config

from contextflow_core import config as config_module
from contextflow_core.config import RagConfig, TrainConfig
from contextflow_core.objectives import OBJECTIVES
from contextflow_core.rag import RAGSequence
from contextflow_core.rag_token import RAGToken
from contextflow_core.retrieval import DocumentIndex
from contextflow_core.training import train_rag

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?", "When was Tarsk founded?"]
ANS = ["Zorblat", "Mivo", "1204"]


def _with_dropout(generator, p: float = 0.3):
    """A tiny Llama whose attention drops out in train mode (tiny.py's has none), so a mode leak shows."""
    generator.config.attention_dropout = p
    for module in generator.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p
    return generator


def _dropout_rag(passages=PASSAGES, cls=RAGSequence, **config):
    """Tiny models with dropout on both sides (BERT's default 0.1, Llama attention 0.3)."""
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    return cls(enc, index, tiny_tokenizer(), _with_dropout(tiny_generator()), config=RagConfig(num_docs=3, **config))


def _modes(module) -> dict:
    return {name: m.training for name, m in module.named_modules()}


def _score(rag):
    with torch.no_grad():
        out = rag(questions=QS, answers=ANS)
    return out.loss.item(), out.doc_logprobs.clone(), out.seq_logprobs.clone()


# ----------------------------------------------------------------------------- item 6: inference modes


def test_generate_restores_each_submodules_own_mode():
    rag = _dropout_rag()
    rag.train()
    rag.generator.eval()  # a frozen generator the user keeps in eval, encoder training
    rag.question_encoder.model.embeddings.eval()
    before = _modes(rag)
    rag.generate(questions=QS[:2], max_new_tokens=3, decoding="fast")
    assert _modes(rag) == before
    assert not any(m.training for m in rag.generator.modules())  # no dropout switched on in the generator


def test_rag_token_generate_restores_each_submodules_own_mode():
    rag = _dropout_rag(cls=RAGToken)
    rag.train()
    rag.generator.eval()
    before = _modes(rag)
    rag.generate(questions=QS[:2], max_new_tokens=3)
    assert _modes(rag) == before


def test_encode_restores_each_submodules_own_mode_and_is_deterministic():
    enc = tiny_encoder()
    enc.train()
    enc.model.encoder.eval()
    before = _modes(enc)
    first = enc.encode(QS)
    assert _modes(enc) == before
    assert torch.equal(first, enc.encode(QS))


def test_from_pretrained_returns_eval_and_scores_the_same_twice(tmp_path):
    rag = _dropout_rag()
    rag.save_pretrained(tmp_path / "saved")
    loaded = RAGSequence.from_pretrained(tmp_path / "saved")
    assert not any(m.training for m in loaded.modules())
    first = _score(loaded)
    loaded.generate(questions=QS[:1], max_new_tokens=2)  # an inference call must not switch dropout on
    assert not any(m.training for m in loaded.modules())
    second = _score(loaded)
    assert first[0] == second[0] and torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])


@pytest.mark.embedded
def test_from_defaults_returns_eval_and_scores_the_same_twice():
    rag = RAGSequence.from_defaults(PASSAGES, num_docs=2)
    assert not any(m.training for m in rag.modules())
    first = _score(rag)
    rag.generate(questions=QS[:1], max_new_tokens=2)
    second = _score(rag)
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def _rag_key(result):
    return result["answer"], [(d.id, d.metadata["weight"]) for d in result["source_documents"]]


def _retriever_key(docs):
    return [(d.id, d.metadata["score"]) for d in docs]


def test_concurrent_langchain_rag_and_retriever_match_sequential_calls():
    pytest.importorskip("langchain_core")
    from contextflow_integrations.langchain import ContextFlowRAG, ContextFlowRetriever

    rag = _dropout_rag()
    rag.train()  # a model mid fine-tuning: every inference call must still run (and leave it) as it should
    for module in (*rag.question_encoder.model.encoder.layer, rag.generator):  # a slower model: calls overlap
        module.register_forward_pre_hook(lambda *_: time.sleep(0.002))
    before = _modes(rag)
    chain, retriever = ContextFlowRAG(model=rag, max_new_tokens=3, decoding="fast"), ContextFlowRetriever(model=rag)
    expected_rag = {q: _rag_key(chain.invoke(q)) for q in QS}
    expected_docs = {q: _retriever_key(retriever.invoke(q)) for q in QS}
    jobs = [(kind, q) for _ in range(8) for q in QS for kind in ("rag", "retriever")]

    def run(job):
        kind, q = job
        return _rag_key(chain.invoke(q)) if kind == "rag" else _retriever_key(retriever.invoke(q))

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(run, jobs))
    for (kind, q), value in zip(jobs, got):
        assert value == (expected_rag if kind == "rag" else expected_docs)[q], (kind, q)
    assert _modes(rag) == before


class _ModeRecorder:
    """Forward pre-hook on a module: records whether any of its sub-modules was in train mode."""

    def __init__(self, module):
        self.seen: list[bool] = []
        self.module = module
        module.register_forward_pre_hook(lambda *_: self.seen.append(any(m.training for m in module.modules())))


@pytest.mark.parametrize("config", [{"train_mode": "retriever"}, {"objective": "lsr"}])
def test_frozen_generator_runs_in_eval_during_training_and_modes_come_back(config):
    model = build_rag()
    model.train()
    model.generator.eval()
    model.question_encoder.model.embeddings.eval()
    before = _modes(model)
    generator, encoder = _ModeRecorder(model.generator), _ModeRecorder(model.question_encoder)
    train, val = loaders()
    train_rag(model, train, val, config=tiny_config(None, max_steps=3, eval_steps=1, **config))
    assert generator.seen and not any(generator.seen)  # scoring (and LSR targets) without dropout
    assert any(encoder.seen)  # the trained side does train
    assert _modes(model) == before


def test_frozen_encoder_runs_in_eval_under_train_mode_generator():
    model = build_rag()
    model.train()
    encoder = _ModeRecorder(model.question_encoder)
    train_rag(model, loaders()[0], config=tiny_config(None, max_steps=2, train_mode="generator"))
    assert encoder.seen and not any(encoder.seen)
    assert all(m.training for m in model.modules())  # as before the run


# ----------------------------------------------------------------------------- item 7: fp32 retriever scores


def test_retriever_scores_are_float32_under_bf16_autocast_with_gradient(passages):
    enc = tiny_encoder(normalize=True)  # cosine scores, tau = 0.05: bf16 rounding shows most here
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    rag = RAGSequence(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=4))
    assert rag.temperature == pytest.approx(0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        doc_lp, retrieved = rag.retrieve(QS)
        q = rag.question_encoder.embed(QS)  # the same question embeddings (eval: deterministic)
    assert doc_lp.dtype == torch.float32
    d = retrieved.embeddings.float()  # (B, K, D) stored vectors
    reference = torch.log_softmax(torch.einsum("bd,bkd->bk", q.detach().float(), d) / rag.temperature, -1)
    assert torch.allclose(doc_lp.detach(), reference, atol=1e-5, rtol=0), (doc_lp - reference).abs().max()
    doc_lp[:, 0].sum().backward()
    grads = [p.grad for p in rag.question_encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------- item 8: exact trainable sets


def _changed(before: dict, model) -> set:
    after = all_params(model)
    return {n for n in after if n in before and not torch.equal(before[n], after[n])}


def _flags(model) -> dict:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_lora_question_encoder_keeps_its_base_frozen_under_train_rag():
    from contextflow_core.models.peft_utils import add_lora

    pytest.importorskip("peft")
    model = add_lora(build_rag(), generator=False, question_encoder=True, r=4)
    flags, before = _flags(model), all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, train_mode="retriever", max_steps=3))
    adapters = {n for n in before if n.startswith("question_encoder.") and "lora_" in n}
    assert adapters and _changed(before, model) == adapters  # every adapter moved, no base weight did
    assert _flags(model) == flags


def test_staged_generator_lora_then_retriever_then_joint_trains_the_adapters_again():
    from contextflow_core.models.peft_utils import add_lora

    pytest.importorskip("peft")
    model = add_lora(build_rag(), r=4)  # generator_lora=True below reuses these adapters
    encoder = {n for n in all_params(model) if n.startswith("question_encoder.")}

    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, train_mode="generator", generator_lora=True,
                                                      lora_r=4, max_steps=3))
    adapters = {n for n in all_params(model) if n.startswith("generator.") and "lora_" in n}
    assert adapters and _changed(before, model) == adapters
    flags = _flags(model)  # peft's set: adapters trainable, base frozen; encoder as before
    assert {n for n, f in flags.items() if n.startswith("generator.") and f} == adapters

    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, train_mode="retriever", max_steps=2))
    assert _changed(before, model) == encoder
    assert _flags(model) == flags  # stage 2 froze the adapters only for its own run

    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, train_mode="joint", max_steps=3))
    assert _changed(before, model) == encoder | adapters
    assert _flags(model) == flags


def test_frozen_flags_the_user_set_come_back_after_train_rag():
    model = build_rag()
    model.generator.lm_head.requires_grad_(False)  # the user's own choice, outside train_rag
    flags = _flags(model)
    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, train_mode="joint", max_steps=2))
    assert "generator.lm_head.weight" in _changed(before, model)  # joint trains every generator weight
    assert _flags(model) == flags


# ----------------------------------------------------------------------------- item 9: objectives


@pytest.mark.parametrize("objective, mode", [("lsr", "retriever"), ("ralt", "generator"), ("marginal", "joint"),
                                             ("emdr2", "joint"), (None, "joint")])
def test_objective_implies_the_train_mode(objective, mode):
    assert TrainConfig(objective=objective).train_mode == mode
    assert TrainConfig(objective=objective, train_mode=mode).train_mode == mode


@pytest.mark.parametrize("objective, mode", [("marginal", "retriever"), ("emdr2", "generator")])
def test_a_compatible_explicit_train_mode_is_kept(objective, mode):
    assert TrainConfig(objective=objective, train_mode=mode).train_mode == mode


@pytest.mark.parametrize("objective, mode", [("lsr", "joint"), ("ralt", "retriever")])
def test_an_explicit_contradictory_train_mode_is_refused(objective, mode):
    with pytest.raises(ValueError, match=f"objective={objective!r}.*train_mode={mode!r}.*leave train_mode unset"):
        TrainConfig(objective=objective, train_mode=mode)


def test_default_train_mode_reads_joint_and_round_trips():
    config = TrainConfig()
    assert config.train_mode == "joint"
    again = config_module.from_dict(TrainConfig, config_module.to_dict(TrainConfig(objective="lsr")))
    assert again.train_mode == "retriever" and again.objective == "lsr"


def test_cli_objective_flag_alone_implies_the_train_mode():
    import argparse

    from contextflow_core.cli import add_dataclass_arguments, dataclass_from_args

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    assert dataclass_from_args(TrainConfig, parser.parse_args(["--objective", "ralt"])).train_mode == "generator"
    assert dataclass_from_args(TrainConfig, parser.parse_args([])).train_mode == "joint"


def test_train_rag_with_objective_lsr_alone_trains_the_retriever_only():
    model = build_rag()
    before = all_params(model)
    history = train_rag(model, loaders()[0], config=tiny_config(None, objective="lsr", max_steps=2))
    assert history.global_step == 2
    assert _changed(before, model) == {n for n in before if n.startswith("question_encoder.")}
    assert model.config.objective == "marginal"  # the model's config comes back


def _grad_sides(model) -> tuple[bool, bool]:
    moved = lambda module: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())  # noqa: E731
    return moved(model.question_encoder), moved(model.generator)


@pytest.mark.parametrize("objective, sides", [("lsr", (True, False)), ("ralt", (False, True)),
                                              ("emdr2", (True, True))])
def test_rag_token_honours_sequence_objectives(passages, objective, sides):
    def build(cls):
        enc = tiny_encoder()
        index = DocumentIndex.from_texts(passages, enc, show_progress=False)
        return cls(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(num_docs=3, objective=objective))

    token, sequence = build(RAGToken), build(RAGSequence)
    got, want = token(questions=QS, answers=ANS), sequence(questions=QS, answers=ANS)
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
    got.loss.backward()
    assert _grad_sides(token) == sides  # the token NLL would train both sides
    token.config = dataclasses.replace(token.config, objective="marginal")
    assert token(questions=QS, answers=ANS).num_answer_tokens is not None  # the RAG-Token marginal path


def test_train_rag_on_rag_token_with_lsr_moves_the_encoder_only():
    sequence = build_rag()
    model = RAGToken(sequence.question_encoder, sequence.retriever, sequence.generator_tokenizer, sequence.generator,
                     num_docs=2)
    before = all_params(model)
    train_rag(model, loaders()[0], config=tiny_config(None, objective="lsr", max_steps=2))
    assert _changed(before, model) == {n for n in before if n.startswith("question_encoder.")}


class _MarginalOnly(RAGToken):
    """A RAG model class that implements only its own marginal likelihood."""

    objectives = {"marginal": getattr(RAGToken, "objectives", {}).get("marginal")}


def test_a_model_refuses_an_objective_it_does_not_implement_by_name(passages):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    with pytest.raises(ValueError, match=r"objective: _MarginalOnly implements \['marginal'\], got 'lsr'"):
        _MarginalOnly(enc, index, tiny_tokenizer(), tiny_generator(), config=RagConfig(objective="lsr"))
    model = _MarginalOnly(enc, index, tiny_tokenizer(), tiny_generator(), num_docs=2)
    flags = _flags(model)
    with pytest.raises(ValueError, match=r"implements \['marginal'\], got 'emdr2'"):
        train_rag(model, [{"questions": [QA[0][0]], "answers": [QA[0][1]]}],
                  config=tiny_config(None, objective="emdr2", max_steps=1))
    assert model.config.objective == "marginal" and _flags(model) == flags


def test_objective_names_live_in_config_and_the_registry_matches_them():
    from contextflow_core.config import OBJECTIVE_NAMES

    assert set(OBJECTIVES) == set(OBJECTIVE_NAMES)
    assert set(RAGToken.objectives) == set(OBJECTIVE_NAMES)
    tree = ast.parse(inspect.getsource(config_module))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name and name.endswith("objectives") for name in imported), imported
