"""LoRA adapters (peft) for the generator and, optionally, the question encoder.

Boundary: wraps modules with adapters; knows nothing of retrieval or losses.
"""

from __future__ import annotations

from collections.abc import Sequence


def _lora_config(task_type, r: int, alpha: int, dropout: float, target_modules):
    from peft import LoraConfig  # imported by add_lora, without bitsandbytes unless a 4/8-bit model loaded it

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task_type, bias="none"
    )


def _keep_4bit_trainable(module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) converts a `Linear4bit`
    weight to a packed inference layout the first time the layer runs in eval
    mode without gradient, and from then on no gradient reaches LoRA adapters.
    Generation and evaluation run in eval mode between training steps, so the
    packing is switched off on adapted models.
    """
    for sub in module.modules():
        if hasattr(sub, "support_avx512bf16_for_cpu"):
            sub.support_avx512bf16_for_cpu = False


def add_lora(
    model,
    *,
    generator: bool = True,
    question_encoder: bool = False,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    generator_targets: Sequence[str] | None = None,
    encoder_targets: Sequence[str] | None = None,
):
    """Wrap the generator (and/or the question encoder body) of a RAGSequence in LoRA, in place.

    A quantized (4/8-bit) generator is first prepared for k-bit training. Only
    adapter weights stay trainable on a wrapped module.

    Args:
        model: A `RAGSequence`.
        generator: Add LoRA to the generator.
        question_encoder: Add LoRA to the question encoder's transformer body.
        r, alpha, dropout: LoRA rank, scaling and dropout.
        generator_targets: Module names to adapt; None: peft's default for the architecture
            (attention projections for Llama).
        encoder_targets: Likewise for the encoder (BERT: "query", "value" by default).

    Returns:
        The same model, for chaining.
    """
    from contextflow_core.optional_deps import bitsandbytes_hidden, import_peft

    import_peft("add_lora")
    from peft import get_peft_model, prepare_model_for_kbit_training

    if r <= 0:
        raise ValueError(f"r: expected a positive LoRA rank, got {r!r}")
    # peft probes bitsandbytes while wrapping; a full-precision model never needs it (a 4/8-bit one has it loaded)
    with bitsandbytes_hidden():
        if generator and not hasattr(model.generator, "peft_config"):
            gen = model.generator
            if getattr(gen, "is_loaded_in_4bit", False) or getattr(gen, "is_loaded_in_8bit", False):
                _keep_4bit_trainable(gen)
                gen = prepare_model_for_kbit_training(
                    gen, use_gradient_checkpointing=model.config.gradient_checkpointing
                )
            model.generator = get_peft_model(gen, _lora_config("CAUSAL_LM", r, alpha, dropout, generator_targets))
        if question_encoder and not hasattr(model.question_encoder.model, "peft_config"):
            targets = encoder_targets or ["query", "value"]
            body = model.question_encoder.model
            model.question_encoder.model = get_peft_model(body, _lora_config(None, r, alpha, dropout, list(targets)))
    return model
