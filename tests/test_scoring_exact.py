"""Lean scoring is exact or refuses (issue 13, item 10).

`RagConfig(scoring="hidden")` must give the same log p(y|f(x,z)) and the same
gradients as "full" and "logits_to_keep" on every architecture, or fall back
(visibly) to "logits_to_keep": LoRA on the LM head, Granite's logits_scaling,
Cohere's logit_scale, Gemma-2's final soft-capping. Tiny random configs of each
architecture, built here (no downloads), with the tiny byte tokenizer.
"""
import warnings

import pytest
import torch
from tiny import BOS, EOS, PAD, VOCAB_SIZE, tiny_encoder, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from contextflow_core.config import RagConfig
from contextflow_core.models.peft_utils import add_lora
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex
from contextflow_core import scoring

QS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"]
ANS = ["Zorblat", "Mivo flows west"]
MODES = ("full", "logits_to_keep", "hidden")
MODEL_TYPE = {cls: mt for mt, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if isinstance(cls, str)}
# Logit post-processing set well away from the identity, so skipping it changes every score.
POST = {"granite": {"logits_scaling": 4.0}, "cohere": {"logit_scale": 0.25}, "gemma2": {"final_logit_softcapping": 0.5}}


def tiny_lm(model_type: str, seed: int = 0, **overrides):
    """A 2-layer random causal LM of `model_type` over the tiny tokenizer's vocabulary."""
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                  pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, tie_word_embeddings=False)
    kwargs.update(POST.get(model_type, {}), **overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).float().eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    return model


def build(passages, generator, mode: str) -> RAGSequence:
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    return RAGSequence(enc, index, tiny_tokenizer(), generator, config=RagConfig(num_docs=2, scoring=mode))


def scores_and_grads(passages, generator, mode: str):
    """seq_logprobs (B, K) and {name: grad} of the generator's trainable parameters after loss.backward()."""
    rag = build(passages, generator, mode)
    rag.generator.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = rag(questions=QS, answers=ANS)
    out.loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in rag.generator.named_parameters() if p.requires_grad}
    return out.seq_logprobs.detach(), grads


def assert_modes_agree(passages, generator):
    results = {mode: scores_and_grads(passages, generator, mode) for mode in MODES}
    ref_scores, ref_grads = results["full"]
    for mode in ("logits_to_keep", "hidden"):
        scores, grads = results[mode]
        assert torch.allclose(scores, ref_scores, atol=1e-5), (mode, scores, ref_scores)
        for name, g in ref_grads.items():
            assert torch.allclose(grads[name], g, atol=1e-5), (mode, name, (grads[name] - g).abs().max())


def perturb_lora(generator, seed: int = 1):
    """Random adapter weights, as after some training (peft starts lora_B at zero, a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in generator.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("model_type", ["llama", "granite", "gemma2", "cohere"])
def test_hidden_equals_full_on_logit_post_processing_models(passages, model_type):
    assert_modes_agree(passages, tiny_lm(model_type))


@pytest.mark.parametrize("model_type", ["llama", "granite", "gemma2", "cohere"])
def test_hidden_equals_full_with_lora_on_lm_head_and_the_head_adapter_gets_its_gradient(passages, model_type):
    rag = add_lora(build(passages, tiny_lm(model_type), "full"), r=4,
                   generator_targets=["q_proj", "v_proj", "lm_head"])
    generator = rag.generator
    perturb_lora(generator)
    results = {mode: scores_and_grads(passages, generator, mode) for mode in MODES}
    head_b = [n for n in results["full"][1] if "lm_head" in n and "lora_B" in n]
    assert head_b and results["full"][1][head_b[0]].abs().sum() > 0
    assert_modes_agree(passages, generator)


def test_fallback_is_visible_and_named(passages):
    gemma = tiny_lm("gemma2")
    assert "Gemma2ForCausalLM" in scoring.hidden_scoring_fallback(gemma)
    rag = build(passages, gemma, "hidden")
    with pytest.warns(UserWarning, match=r"scoring='hidden': Gemma2ForCausalLM .*'logits_to_keep'"):
        rag(questions=QS, answers=ANS)
    lora = add_lora(build(passages, tiny_lm("llama"), "hidden"), r=4, generator_targets=["q_proj", "lm_head"])
    assert "not a plain float torch.nn.Linear" in scoring.hidden_scoring_fallback(lora.generator)
    with pytest.warns(UserWarning, match="LoRA, modules_to_save or quantization on lm_head"):
        lora(questions=QS, answers=ANS)


def test_plain_models_take_the_hidden_path(passages):
    """LoRA on attention only, and soft-capping switched off, keep the lean path (no fallback)."""
    rag = add_lora(build(passages, tiny_lm("llama"), "hidden"), r=4, generator_targets=["q_proj", "v_proj"])
    assert scoring.hidden_scoring_fallback(rag.generator) is None
    assert scoring.hidden_scoring_fallback(tiny_lm("gemma2", final_logit_softcapping=None)) is None
    assert scoring.hidden_scoring_fallback(tiny_lm("granite")) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rag(questions=QS, answers=ANS)
    assert not [w for w in caught if "scoring=" in str(w.message)]


@pytest.mark.parametrize("class_name", sorted(getattr(scoring, "LOGIT_SCALES", {})))
def test_every_listed_architecture_is_exact_on_the_hidden_path(passages, class_name):
    generator = tiny_lm(MODEL_TYPE[class_name])
    assert type(generator).__name__ == class_name
    if class_name == "Gemma2ForCausalLM":  # soft-capped: the fallback; without it, the hidden path
        assert scoring.hidden_scoring_fallback(generator) is not None
        generator = tiny_lm("gemma2", final_logit_softcapping=None)
    assert scoring.hidden_scoring_fallback(generator) is None
    assert_modes_agree(passages, generator)
