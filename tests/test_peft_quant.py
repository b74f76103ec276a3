"""LoRA and 4/8-bit generators: the joint loss trains only what should train."""
import pytest
import torch
from tiny import tiny_encoder, tiny_generator, tiny_tokenizer

from contextflow_core.models import load_generator
from contextflow_core.models.peft_utils import add_lora
from contextflow_core.rag import RAGSequence
from contextflow_core.retrieval import DocumentIndex

QS, ANS = ["What is the capital of Quenia?", "Which river flows through Tarsk?"], ["Zorblat", "Mivo"]


def _rag(passages, generator, tokenizer):
    enc = tiny_encoder()
    index = DocumentIndex.from_texts(passages, enc, show_progress=False)
    return RAGSequence(enc, index, tokenizer, generator, num_docs=2)


def _step_and_changed(rag):
    before = {n: p.detach().clone().float() for n, p in rag.named_parameters()}
    trainable = [p for p in rag.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    loss = rag(questions=QS, answers=ANS).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    return {n for n, p in rag.named_parameters() if not torch.equal(before[n], p.detach().float())}


def test_lora_generator_changes_only_adapters_and_encoder(passages):
    rag = add_lora(_rag(passages, tiny_generator(), tiny_tokenizer()), r=4)
    changed = _step_and_changed(rag)
    gen_changed = {n for n in changed if n.startswith("generator.")}
    assert gen_changed and all("lora_" in n for n in gen_changed)
    assert any(n.startswith("question_encoder.") for n in changed)


def test_lora_on_question_encoder_too(passages):
    rag = add_lora(_rag(passages, tiny_generator(), tiny_tokenizer()), question_encoder=True, r=4)
    changed = _step_and_changed(rag)
    assert changed and all("lora_" in n for n in changed)
    assert any(n.startswith("question_encoder.") for n in changed)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_lm")
    tiny_generator(hidden=64).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_generator_with_lora_trains_adapters_only(passages, saved_tiny, bits):
    pytest.importorskip("bitsandbytes")
    generator, tokenizer = load_generator(saved_tiny, quantization=bits)
    assert getattr(generator, f"is_loaded_in_{bits[0]}bit")
    rag = add_lora(_rag(passages, generator, tokenizer), r=4)
    ids = torch.tensor([[7, 8, 9, 10]])

    def base_and_adapted():
        with torch.no_grad():
            with rag.generator.disable_adapter():
                base = rag.generator(input_ids=ids).logits
            return base, rag.generator(input_ids=ids).logits

    rag.eval()
    base_before, adapted_before = base_and_adapted()  # eval + no_grad first, as generation between steps does
    rag.train()
    changed = _step_and_changed(rag)
    rag.eval()
    base_after, adapted_after = base_and_adapted()
    trainable = {n for n, p in rag.generator.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_" in n for n in changed)
    assert torch.allclose(base_before, base_after, atol=1e-5)
    assert not torch.allclose(adapted_before, adapted_after, atol=1e-5)


def test_lora_save_load_round_trip(passages, tmp_path, saved_tiny):
    generator, tokenizer = load_generator(saved_tiny)
    rag = add_lora(_rag(passages, generator, tokenizer), r=4)
    _step_and_changed(rag)
    rag.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "generator" / "model.safetensors").exists()
    again = RAGSequence.from_pretrained(tmp_path / "m")
    rag.eval(), again.eval()
    a, b = rag(questions=QS, answers=ANS), again(questions=QS, answers=ANS)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)
