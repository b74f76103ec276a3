"""Configuration dataclasses, one per concern.

Each dataclass documents its fields and rejects contradictions in
`__post_init__`; the CLI builds its flags from these same dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .validation import as_bool, check_placeholders, is_int, refuse_unknown_fields


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@refuse_unknown_fields
@dataclass
class PromptConfig:
    """How f(x, z) is rendered.

    Attributes:
        system_prompt: System turn (chat template) or first paragraph (plain). None: none.
        instruction: Put before the passage in the user turn.
        passage_format: Format of one passage, with `{title}` and `{text}`.
        passage_format_untitled: Format used when a passage has no title.
        question_format: Format of the question, with `{question}`.
        user_format: Layout of the user turn, with `{instruction}`, `{passages}` and `{question}`.
        passage_separator: Between passages when several share one prompt ("concat" decoding).
        answer_prefix: Put after the user turn in plain (no chat template) prompts.
        use_chat_template: True/False forces it; None uses it when the tokenizer has one.
        max_length: Budget in tokens for prompt + answer; passage tokens are cut to fit.
            None: the tokenizer's `model_max_length`, capped at 2048.
    """

    system_prompt: str | None = "You answer questions using the given passage. Reply with the answer only."
    instruction: str = "Read the passage and answer the question."
    passage_format: str = "Title: {title}\n{text}"
    passage_format_untitled: str = "{text}"
    question_format: str = "Question: {question}"
    user_format: str = "{instruction}\n\nPassage:\n{passages}\n\n{question}"
    passage_separator: str = "\n\n"
    answer_prefix: str = "\nAnswer: "
    use_chat_template: bool | None = None
    max_length: int | None = None

    #: Placeholders each format may use, and those it must use (checked at construction, not at generate time).
    PLACEHOLDERS = {
        "passage_format": (("title", "text"), ("text",)),
        "passage_format_untitled": (("text",), ("text",)),
        "question_format": (("question",), ("question",)),
        "user_format": (("instruction", "passages", "question"), ("passages", "question")),
    }

    def __post_init__(self) -> None:
        for name, (allowed, required) in self.PLACEHOLDERS.items():
            check_placeholders(name, getattr(self, name), allowed, required)
        for name in ("instruction", "passage_separator", "answer_prefix"):
            _check(isinstance(getattr(self, name), str), f"{name}: expected a string, got {getattr(self, name)!r}")
        _check(
            self.system_prompt is None or isinstance(self.system_prompt, str),
            f"system_prompt: expected a string or None, got {self.system_prompt!r}",
        )
        _check(
            self.use_chat_template is None or isinstance(self.use_chat_template, bool),
            f"use_chat_template: expected True, False or None, got {self.use_chat_template!r}",
        )
        _check(
            self.max_length is None or is_int(self.max_length),
            f"max_length must be a positive number of tokens or None, got {self.max_length!r}",
        )
        if self.max_length is not None:
            self.max_length = int(self.max_length)  # numpy ints -> int (JSON-ready)


# Objective names and the train mode each implies (the sides it gives a gradient to). The
# registry of loss functions is `objectives.OBJECTIVES`; config holds data only (no behaviour).
OBJECTIVE_TRAIN_MODES: dict[str, str] = {"marginal": "joint", "lsr": "retriever", "ralt": "generator", "emdr2": "joint"}
OBJECTIVE_NAMES: tuple[str, ...] = tuple(OBJECTIVE_TRAIN_MODES)
TRAIN_MODES = ("joint", "generator", "retriever")
# Which sides a train mode trains: (question encoder, generator).
MODE_SIDES: dict[str, tuple[bool, bool]] = {
    "joint": (True, True),
    "retriever": (True, False),
    "generator": (False, True),
}

COSINE_TEMPERATURE = 0.05  # normalized encoders (cosine scores), as in contrastive sentence-embedding training
INNER_PRODUCT_TEMPERATURE = 1.0  # unnormalized inner products (DPR), as in the RAG paper


def default_temperature(question_encoder: Any) -> float:
    """The retriever temperature RagConfig(temperature=None) resolves to for `question_encoder`."""
    return COSINE_TEMPERATURE if getattr(question_encoder, "normalize", False) else INNER_PRODUCT_TEMPERATURE


@refuse_unknown_fields
@dataclass
class RagConfig:
    """How the RAG-Sequence model scores and marginalises.

    Attributes:
        num_docs: K, passages retrieved per question.
        temperature: tau in p(z|x) = softmax(q.d / tau). None (the default) picks it
            from the question encoder when the model is built: COSINE_TEMPERATURE (0.05)
            when it L2-normalizes its embeddings (cosine scores lie in [-1, 1], so tau = 1
            would keep p(z|x) close to uniform), INNER_PRODUCT_TEMPERATURE (1.0) otherwise
            (unbounded inner products, as DPR's). Measured in benchmarks/RESULTS.md, section 5.
        length_normalize: Divide log p(y|f(x,z)) by the answer length before
            marginalising. Off by default: it changes the objective away from the
            marginal likelihood (DESIGN.md) and is only a heuristic for long answers.
        freeze_retriever: No gradient into the question encoder from the loss.
        freeze_generator: No gradient into the generator from the loss.
        scoring: "logits_to_keep" (left padding, logits only at answer positions) or
            "hidden" (decoder hidden states at answer positions, chunked
            linear cross-entropy, no logits tensor at all), or "full"
            (all-position logits: the naive reference, for benchmarks and tests).
        micro_batch_size: Generator sequences per forward; None: all B*K at once.
        gradient_checkpointing: Enable HF gradient checkpointing on the generator.
        objective: Loss `forward` returns: "marginal" (joint RAG-Sequence NLL),
            "lsr" (REPLUG-LSR, retriever only), "ralt" (RA-DIT, generator only) or
            "emdr2" (EMDR^2); see `objectives.py`.
        train_context_encoder: Embed the K retrieved passages live with the context
            encoder (gradient reaches it) instead of using the index's stored vectors;
            the index then goes stale and should be refreshed (TrainConfig.refresh_index_steps).
        source_weights: How decoding weights an answer's sources: "posterior" (the default),
            p(z|x,y), the answer's posterior over the K passages; or "retriever", p(z|x), the
            retriever's distribution. They cost the same in "thorough", "fast" and RAG-Token
            (the per-passage scores are there anyway); in "concat", "posterior" scores the answer
            under each passage alone (one extra pass of K prompts), "retriever" skips that pass.
    """

    num_docs: int = 5
    temperature: float | None = None
    length_normalize: bool = False
    freeze_retriever: bool = False
    freeze_generator: bool = False
    scoring: str = "logits_to_keep"
    micro_batch_size: int | None = None
    gradient_checkpointing: bool = False
    objective: str = "marginal"
    train_context_encoder: bool = False
    source_weights: str = "posterior"

    def __post_init__(self) -> None:
        _check(
            self.source_weights in SOURCE_WEIGHTS,
            f"source_weights must be 'posterior' or 'retriever', got {self.source_weights!r}",
        )
        _check(
            self.objective in OBJECTIVE_NAMES,
            f"objective must be one of {sorted(OBJECTIVE_NAMES)}, got {self.objective!r}",
        )
        _check(is_int(self.num_docs), f"num_docs must be a positive integer, got {self.num_docs!r}")
        self.num_docs = int(self.num_docs)  # numpy ints -> int (JSON-ready)
        _check(
            self.temperature is None
            or (
                isinstance(self.temperature, (int, float))
                and not isinstance(self.temperature, bool)
                and self.temperature > 0
            ),
            f"temperature must be a number > 0 or None (chosen from the encoder), got {self.temperature!r}",
        )
        _check(
            self.scoring in ("logits_to_keep", "hidden", "full"),
            f"scoring must be 'logits_to_keep', 'hidden' or 'full', got {self.scoring!r}",
        )
        _check(
            self.micro_batch_size is None or is_int(self.micro_batch_size),
            f"micro_batch_size must be a positive integer or None, got {self.micro_batch_size!r}",
        )
        if self.micro_batch_size is not None:
            self.micro_batch_size = int(self.micro_batch_size)
        for name in (
            "length_normalize",
            "freeze_retriever",
            "freeze_generator",
            "gradient_checkpointing",
            "train_context_encoder",
        ):
            as_bool(name, getattr(self, name))  # "False" (a string) would be truthy
        _check(
            not (self.freeze_retriever and self.freeze_generator),
            "freeze_retriever and freeze_generator are both True: nothing would train",
        )


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls, data: dict[str, Any]):
    """Build `cls` from `data`, naming any unknown key instead of ignoring it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**data)


SOURCE_WEIGHTS = ("posterior", "retriever")  # how decoding weights sources: generation.py
MIXED_PRECISIONS = ("no", "fp16", "bf16")
RESUME_MISMATCH = ("error", "checkpoint", "current")  # behaviour in training/resume.py
FSDP_MODES = ("full_shard", "shard_grad_op")  # reshard after forward or not: training/fsdp.py
_UNSUPPORTED_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")
#: accelerate's experiment trackers (`TrainConfig.report_to`); training/trackers.py holds their packages.
TRACKERS = ("aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "tensorboard", "trackio", "wandb")
TRACKERS_WITH_FILES = ("aim", "tensorboard")  # they write under output_dir, so they need one


@dataclass
class TrainConfig:
    """How `train_rag` trains a RAGSequence (optimiser, schedule, checkpoints, logging).

    Attributes:
        num_epochs: Passes over the training data.
        learning_rate: Peak learning rate of every parameter group without its own.
        question_encoder_lr: Learning rate of the question encoder; None: `learning_rate`.
        generator_lr: Learning rate of the generator (or its LoRA adapters); None: `learning_rate`.
        train_mode: "joint" (question encoder and generator), "generator" or "retriever"
            (question encoder only); the other side is frozen (no gradient, eval mode).
            None (the default): implied by `objective` ("lsr" -> "retriever", "ralt" ->
            "generator", otherwise "joint"); the resolved value is what the field reads.
        generator_lora: Train LoRA adapters on the generator instead of all its weights.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = lora_alpha / lora_r).
        lora_dropout: Dropout on the LoRA input.
        lora_target_modules: Module names that get adapters; None: peft's default for the architecture.
        weight_decay: AdamW weight decay (never applied to biases and norm weights).
        warmup_ratio: Fraction of the optimiser steps spent warming the learning rate up.
        scheduler: A `transformers.get_scheduler` name ("linear", "cosine", "constant", ...).
        gradient_accumulation_steps: Batches whose gradients are summed before one optimiser step.
        max_grad_norm: Clip the global gradient norm to this; None: no clipping.
        mixed_precision: "no", "fp16" or "bf16" (accelerate autocast).
        gradient_checkpointing: Recompute generator activations in backward to save memory.
        num_docs: K passages per question while training and evaluating; None: the model's.
        eval_steps: Evaluate every this many optimiser steps; None: only at epoch ends.
        eval_on_epoch_end: Evaluate at the end of every epoch (needs a validation set).
        save_steps: Save a checkpoint every this many optimiser steps; None: only at epoch ends.
        save_on_epoch_end: Save a checkpoint at the end of every epoch (needs `output_dir`).
        early_stopping_patience: Stop after this many evaluations without a better validation
            loss; None: never stop early.
        early_stopping_min_delta: Smallest decrease of the validation loss that counts as better.
        seed: Seeds python, numpy and torch before training.
        output_dir: Folder for checkpoints, metrics.jsonl and the curve plot; None: write nothing.
        resume: "auto" (the most recently written complete checkpoint in `output_dir`, if
            any: with several runs there, the newest run's latest), a checkpoint path, or False
            (a new run). Every run has an id recorded in its checkpoints; rotation only removes
            checkpoints of the same run, and a run that could overwrite another run's checkpoint
            (one at a step it may still write) is refused before training. A resumed run
            continues its checkpoint's run and replaces that run's later checkpoints, if any.
        resume_mismatch: What happens when the checkpoint to resume was written for another
            model (frozen weights, model configs, tokenizers), another RagConfig or another
            training set-up (every TrainConfig field but those that only lengthen, evaluate,
            save or log: see `training.resume.FREE_TRAIN_FIELDS`): "error" (refuse, the default),
            "checkpoint" (continue with the recorded RagConfig and TrainConfig; a different
            model is still refused) or "current" (continue with yours, with a warning).
        save_total_limit: Keep only the newest this many checkpoints; None: keep all.
        log_every: Record the training loss every this many optimiser steps.
        max_steps: Stop after this many optimiser steps in total; None: run all epochs.
        eval_generate: Also generate answers during evaluation for exact match and F1.
        eval_max_new_tokens: Token budget of generated answers during evaluation.
        eval_decoding: RAG decoding mode during evaluation ("thorough", "fast", "concat").
        max_nonfinite_steps: Stop with an error after this many optimiser steps in a row
            were skipped because the loss was NaN or infinite.
        progress: Show a progress bar and print the final summary (main process only).
        plot: Draw the loss curves to `output_dir/training_curves.png` (needs matplotlib).
        objective: Training objective set on the model ("marginal", "lsr", "ralt", "emdr2";
            see `objectives.py`); None keeps the model's. The objective implies the train
            mode; an explicit train_mode that trains a side the objective gives no gradient
            ("lsr" with "joint"/"generator", "ralt" with "joint"/"retriever") is an error.
        refresh_index_steps: Re-encode every passage with the current context encoder and
            rebuild the index every this many optimiser steps; None: never.
        refresh_in_background: Rebuild in a thread while training goes on with the old
            index; the new one is swapped in at the first step boundary after it is ready.
        report_to: Experiment trackers (accelerate's) that receive the same train and eval
            records as metrics.jsonl: names from `TRACKERS` ("tensorboard", "wandb",
            "mlflow", ...), a single name, or None / [] / "none" for none (the resolved
            value is always a list). "tensorboard" and "aim" write under
            `output_dir/trackers`; a tracker whose package is missing is refused before
            training, with its pip command.
        fsdp: Shard the generator and the question encoder with FSDP2 (torch `fully_shard`)
            across the processes of a distributed launch (`torchrun` / `accelerate launch`):
            "full_shard" (parameters re-sharded after each forward, ZeRO-3-like) or
            "shard_grad_op" (kept gathered until the backward, ZeRO-2-like); None: no
            sharding (DDP when several processes). Checkpoints are then sharded
            (see `training.fsdp`). Not with fp16 or `refresh_index_steps`.
        fsdp_wrap_classes: Layer class names that become their own FSDP unit (e.g.
            ["LlamaDecoderLayer", "BertLayer"]); None: each model's `_no_split_modules`.
    """

    num_epochs: int = 3
    learning_rate: float = 5e-5
    question_encoder_lr: float | None = None
    generator_lr: float | None = None
    train_mode: str | None = None
    generator_lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    num_docs: int | None = None
    eval_steps: int | None = None
    eval_on_epoch_end: bool = True
    save_steps: int | None = None
    save_on_epoch_end: bool = True
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    seed: int = 42
    output_dir: str | None = None
    resume: Any = "auto"
    resume_mismatch: str = "error"
    save_total_limit: int | None = 2
    log_every: int = 10
    max_steps: int | None = None
    eval_generate: bool = False
    eval_max_new_tokens: int = 32
    eval_decoding: str = "thorough"
    max_nonfinite_steps: int = 5
    progress: bool = True
    plot: bool = True
    objective: str | None = None
    refresh_index_steps: int | None = None
    refresh_in_background: bool = True
    report_to: list[str] | None = None
    fsdp: str | None = None
    fsdp_wrap_classes: list[str] | None = None

    def __post_init__(self) -> None:
        self._check_numbers()
        self._resolve_train_mode()
        self._check_choices()
        self._check_contradictions()
        self._check_report_to()

    def _resolve_train_mode(self) -> None:
        """Fill train_mode=None from the objective, checking an explicit one against it."""
        _check(
            self.objective is None or self.objective in OBJECTIVE_NAMES,
            f"objective must be one of {sorted(OBJECTIVE_NAMES)} or None, got {self.objective!r}",
        )
        implied = OBJECTIVE_TRAIN_MODES[self.objective] if self.objective is not None else "joint"
        if self.train_mode is None:
            self.train_mode = implied
            return
        _check(self.train_mode in TRAIN_MODES, f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        trains = MODE_SIDES[implied]
        _check(
            all(want or not has for want, has in zip(trains, MODE_SIDES[self.train_mode], strict=True)),
            f"objective={self.objective!r} trains {'the question encoder' if trains[0] else 'no question encoder'}"
            f" and {'the generator' if trains[1] else 'no generator'}, but train_mode={self.train_mode!r}; "
            f"leave train_mode unset (None) or set train_mode={implied!r}",
        )

    def _check_numbers(self) -> None:
        for name in (
            "num_epochs",
            "lora_r",
            "gradient_accumulation_steps",
            "log_every",
            "eval_max_new_tokens",
            "max_nonfinite_steps",
        ):
            _check(
                _is_positive_int(getattr(self, name)), f"{name} must be a positive integer, got {getattr(self, name)!r}"
            )
        for name in (
            "num_docs",
            "eval_steps",
            "save_steps",
            "early_stopping_patience",
            "save_total_limit",
            "max_steps",
            "refresh_index_steps",
        ):
            value = getattr(self, name)
            _check(
                value is None or _is_positive_int(value), f"{name} must be a positive integer or None, got {value!r}"
            )
        for name in ("learning_rate", "question_encoder_lr", "generator_lr", "max_grad_norm"):
            value = getattr(self, name)
            optional = "" if name == "learning_rate" else " or None"
            _check(
                (value is None and optional != "") or (_is_finite_number(value) and value > 0),
                f"{name} must be a finite positive number (not a bool){optional}, got {value!r}",
            )
        for name, low, high in (
            ("weight_decay", 0, None),
            ("warmup_ratio", 0, 1),
            ("lora_dropout", 0, 1),
            ("lora_alpha", 0, None),
            ("early_stopping_min_delta", 0, None),
        ):
            value, strict = getattr(self, name), name == "lora_alpha"
            ok = (
                _is_finite_number(value)
                and (value > low if strict else value >= low)
                and (high is None or value < high)
            )
            expected = f"{'>' if strict else '>='} {low}" if high is None else f"in [{low}, {high})"
            _check(ok, f"{name} must be a finite number {expected} (not a bool), got {value!r}")
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            f"seed must be an integer, got {self.seed!r}",
        )

    def _check_report_to(self) -> None:
        """Resolve `report_to` to a list of known tracker names (refusing unknown ones by name)."""
        value = self.report_to
        names = [] if value is None else [value] if isinstance(value, str) else value
        _check(
            isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names),
            f"report_to must be a tracker name, a list of them, 'none' or None, got {value!r}",
        )
        names = list(dict.fromkeys(names))
        if "none" in names:
            _check(
                names == ["none"],
                f"report_to: 'none' turns tracking off, so it cannot be listed with "
                f"other trackers, got {value!r}; keep 'none' or the tracker names",
            )
            names = []
        unknown = [n for n in names if n not in TRACKERS]
        _check(
            not unknown,
            f"report_to: unknown tracker(s) {unknown}; expected names from {TRACKERS} "
            f"(accelerate's trackers) or 'none', got {value!r}",
        )
        need_dir = [n for n in names if n in TRACKERS_WITH_FILES]
        _check(
            not need_dir or self.output_dir is not None,
            f"report_to: {need_dir} write(s) event files under output_dir, got output_dir=None; "
            "set output_dir or drop them from report_to",
        )
        self.report_to = names

    def _check_choices(self) -> None:
        from .optional_deps import bitsandbytes_hidden

        with bitsandbytes_hidden():  # transformers' trainer_utils imports peft, and peft bitsandbytes
            from transformers import SchedulerType

        _check(
            self.mixed_precision in MIXED_PRECISIONS,
            f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}",
        )
        names = tuple(s.value for s in SchedulerType if s.value not in _UNSUPPORTED_SCHEDULERS)
        _check(self.scheduler in names, f"scheduler must be one of {names}, got {self.scheduler!r}")
        _check(
            self.eval_decoding in ("thorough", "fast", "concat"),
            f"eval_decoding must be 'thorough', 'fast' or 'concat', got {self.eval_decoding!r}",
        )
        _check(
            self.resume is False or self.resume is None or (isinstance(self.resume, str) and self.resume != ""),
            f"resume must be 'auto', a checkpoint path or False, got {self.resume!r}",
        )
        _check(
            self.resume_mismatch in RESUME_MISMATCH,
            f"resume_mismatch must be one of {RESUME_MISMATCH}, got {self.resume_mismatch!r}",
        )
        if self.lora_target_modules is not None:
            _check(
                isinstance(self.lora_target_modules, (list, tuple))
                and len(self.lora_target_modules) > 0
                and all(isinstance(m, str) and m for m in self.lora_target_modules),
                f"lora_target_modules must be a non-empty list of module names or None, "
                f"got {self.lora_target_modules!r}",
            )
            self.lora_target_modules = list(self.lora_target_modules)

    def _check_contradictions(self) -> None:
        _check(
            not (self.generator_lora and self.train_mode == "retriever"),
            "generator_lora is True but train_mode='retriever' trains no generator; "
            "set train_mode='joint' or 'generator', or generator_lora=False",
        )
        _check(
            not (self.generator_lr is not None and self.train_mode == "retriever"),
            f"generator_lr={self.generator_lr!r} is set but train_mode='retriever' freezes the generator",
        )
        _check(
            not (self.question_encoder_lr is not None and self.train_mode == "generator"),
            f"question_encoder_lr={self.question_encoder_lr!r} is set but train_mode='generator' "
            "freezes the question encoder",
        )
        _check(
            self.save_steps is None or self.output_dir is not None,
            f"save_steps={self.save_steps!r} needs output_dir to write checkpoints to, got output_dir=None",
        )
        _check(
            self.early_stopping_patience is None or self.eval_steps is not None or self.eval_on_epoch_end,
            f"early_stopping_patience={self.early_stopping_patience!r} needs evaluations; "
            "set eval_steps or eval_on_epoch_end=True",
        )
        self._check_fsdp()

    def _check_fsdp(self) -> None:
        _check(
            self.fsdp is None or self.fsdp in FSDP_MODES, f"fsdp must be one of {FSDP_MODES} or None, got {self.fsdp!r}"
        )
        names = self.fsdp_wrap_classes
        _check(
            names is None
            or (isinstance(names, (list, tuple)) and len(names) > 0 and all(isinstance(n, str) and n for n in names)),
            f"fsdp_wrap_classes must be a non-empty list of module class names or None, got {names!r}",
        )
        _check(
            names is None or self.fsdp is not None,
            f"fsdp_wrap_classes={names!r} is set but fsdp=None shards nothing; set fsdp='full_shard'",
        )
        self.fsdp_wrap_classes = None if names is None else list(names)
        if self.fsdp is not None:
            _check(
                self.mixed_precision != "fp16",
                "fsdp does not support mixed_precision='fp16' "
                "(no sharded gradient scaler here); use mixed_precision='bf16' or 'no'",
            )
            _check(
                self.refresh_index_steps is None,
                f"fsdp={self.fsdp!r} with refresh_index_steps={self.refresh_index_steps!r}: the index "
                "refresh encodes passages with the sharded encoder outside the training step; "
                "set refresh_index_steps=None (refresh after training) or fsdp=None",
            )

    @property
    def lr_question_encoder(self) -> float:
        """The question encoder's learning rate after defaults."""
        return self.learning_rate if self.question_encoder_lr is None else self.question_encoder_lr

    @property
    def lr_generator(self) -> float:
        """The generator's learning rate after defaults."""
        return self.learning_rate if self.generator_lr is None else self.generator_lr


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
