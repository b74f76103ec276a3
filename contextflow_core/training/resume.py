"""Which run a `train_rag` call is, and whether a checkpoint may be resumed into it.

Boundary: reads checkpoint manifests and trainer states (via `checkpoint`), compares
them with the model and configs at hand, and decides the run id and the settings in
effect. Loads no weights (that is `checkpoint.load_checkpoint`); no printing.

Rules (documented in `TrainConfig.resume` / `resume_mismatch`):

- Every run has an id. `resume=False` (or "auto" with nothing to resume) starts a new id;
  resuming a checkpoint continues its run's id.
- `resume="auto"` picks the most recently written complete checkpoint in `output_dir`
  (`checkpoint.latest_checkpoint`): with several runs there, the newest run's latest.
- A run never overwrites another run's checkpoint: when `output_dir` holds checkpoints
  of another run at steps this run could still write (after its start step, up to its
  planned total), it is refused before training.
- A checkpoint records the model's identity (`model_identity`), its RagConfig and its
  TrainConfig. Resuming with another model, RagConfig or training set-up is refused
  unless `resume_mismatch` says which side wins. Settings a user legitimately changes
  to train longer or log differently (`FREE_TRAIN_FIELDS`, `FREE_RAG_FIELDS`) never count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contextflow_core.config import RagConfig, TrainConfig, to_dict
from contextflow_core.training import checkpoint as ckpt

__all__ = [
    "FREE_RAG_FIELDS",
    "FREE_TRAIN_FIELDS",
    "ResumePlan",
    "check_collisions",
    "check_resume",
    "model_identity",
    "new_run_id",
    "plan_resume",
]

#: TrainConfig fields that may differ between a checkpoint and the resuming call (they do not
#: change what one optimiser step does: length of training, evaluation, saving, logging).
FREE_TRAIN_FIELDS = frozenset(
    {
        "num_epochs",
        "max_steps",
        "output_dir",
        "resume",
        "resume_mismatch",
        "save_steps",
        "save_on_epoch_end",
        "save_total_limit",
        "log_every",
        "progress",
        "plot",
        "eval_steps",
        "eval_on_epoch_end",
        "eval_generate",
        "eval_max_new_tokens",
        "eval_decoding",
        "early_stopping_patience",
        "early_stopping_min_delta",
        "max_nonfinite_steps",
        "seed",
        "gradient_checkpointing",
        "report_to",
    }
)
#: RagConfig fields that change memory use or speed only, never the loss.
FREE_RAG_FIELDS = frozenset({"micro_batch_size", "gradient_checkpointing", "scoring"})

#: HF config keys that vary with how a model was loaded or is run, not with what it is.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_return_dict",
    }
)
_SAMPLES = 4096  # values hashed per frozen tensor


def new_run_id() -> str:
    """A fresh run id: UTC start time and 8 random hex digits."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------- identity


def _sample_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n > _SAMPLES:  # evenly spaced positions, integer arithmetic: the same on every device
        flat = flat[torch.arange(_SAMPLES, device=flat.device) * (n - 1) // (_SAMPLES - 1)]
    return flat.float().cpu().numpy().tobytes()


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    for name, tensor in sorted(frozen + list(model.named_buffers()), key=lambda item: item[0]):
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(_sample_bytes(tensor))
    return digest.hexdigest()


def _configs(model) -> tuple[str, list[str]]:
    seen, configs, names = set(), [], []
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is None or not hasattr(cfg, "to_dict") or id(cfg) in seen:
            continue
        seen.add(id(cfg))
        names.append(f"{getattr(cfg, 'model_type', '?')}:{getattr(cfg, '_name_or_path', '') or '?'}")
        kept = {k: v for k, v in cfg.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        configs.append(json.dumps(kept, sort_keys=True, default=str))
    for attr in ("question_encoder", "context_encoder"):
        enc = getattr(model, attr, None)
        settings = {k: getattr(enc, k, None) for k in ("pooling", "normalize", "max_length")}
        configs.append(json.dumps({attr: type(enc).__name__, **settings}, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(sorted(configs)).encode()).hexdigest(), sorted(names)


def _tokenizers_digest(model) -> str:
    digest = hashlib.sha256()
    encoder = getattr(model, "question_encoder", None)
    for tok in (getattr(model, "generator_tokenizer", None), getattr(encoder, "tokenizer", None)):
        vocab = sorted(tok.get_vocab().items()) if tok is not None and hasattr(tok, "get_vocab") else []
        info = {
            "class": type(tok).__name__,
            "vocab": vocab,
            "special": getattr(tok, "special_tokens_map", None),
            "chat_template": getattr(tok, "chat_template", None),
        }
        digest.update(json.dumps(info, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def model_identity(model) -> dict[str, Any]:
    """What a checkpoint's trainable parameters depend on but do not hold (call after the train mode is set).

    Cheap and sound for what a resume restores: the trainable parameters come from the
    checkpoint, so only the rest must match: a digest of the frozen parameters and buffers
    (name, dtype, shape and an evenly spaced sample of values), of the HF model configs and
    encoder settings (pooling, normalize, max_length), and of the tokenizers (vocabulary,
    special tokens, chat template).
    """
    configs, names = _configs(model)
    return {
        "weights": _weights_digest(model),
        "configs": configs,
        "tokenizers": _tokenizers_digest(model),
        "models": names,
    }


# ---------------------------------------------------------------------------- plan


@dataclass
class ResumePlan:
    """What `train_rag` resumes from and with which settings.

    Attributes:
        path: The checkpoint to resume, or None (a new run).
        run_id: The run's id (the checkpoint's, or a new one).
        config: The TrainConfig in effect.
        rag_config: The RagConfig in effect (None: the model's own).
        manifest, trainer_state: The checkpoint's records (empty for a new run).
        differences: "TrainConfig.x: checkpoint a, now b" lines (non-free fields only).
    """

    path: Path | None
    run_id: str | None
    config: TrainConfig
    rag_config: RagConfig | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    trainer_state: dict[str, Any] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)


def resume_path(config: TrainConfig) -> Path | None:
    """The checkpoint `config.resume` points at, or None."""
    resume, output_dir = config.resume, config.output_dir
    if resume in (False, None):
        return None
    if resume == "auto":
        return None if output_dir is None else ckpt.latest_checkpoint(output_dir)
    path = Path(resume)
    if path.is_dir() and not (path / ckpt.MANIFEST).exists() and ckpt.latest_checkpoint(path):
        return ckpt.latest_checkpoint(path)  # an output_dir: its newest checkpoint
    if not path.exists():
        raise FileNotFoundError(f"resume: expected a checkpoint folder, 'auto' or False, got missing path {resume!r}")
    return path


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _differences(kind: str, recorded: dict, current: dict, free: frozenset) -> list[str]:
    return [
        f"{kind}.{name}: checkpoint {recorded[name]!r}, now {value!r}"
        for name, value in current.items()
        if name not in free and name in recorded and recorded[name] != value
    ]


def plan_resume(model, config: TrainConfig) -> ResumePlan:
    """Find the checkpoint to resume and the settings in effect (nothing is loaded or refused yet)."""
    path = resume_path(config)
    if path is None:
        return ResumePlan(None, new_run_id(), config)
    manifest, state = ckpt.read_records(path)
    train_now, rag_now = _json_ready(to_dict(config)), _json_ready(to_dict(model.config))
    train_then, rag_then = state.get("config") or {}, state.get("rag_config") or {}
    train_diff = _differences("TrainConfig", train_then, train_now, FREE_TRAIN_FIELDS)
    rag_diff = _differences("RagConfig", rag_then, rag_now, FREE_RAG_FIELDS)
    plan = ResumePlan(path, manifest.get("run_id"), config, None, manifest, state, train_diff + rag_diff)
    if config.resume_mismatch == "checkpoint":
        plan.config = dataclasses.replace(
            config, **{n: train_then[n] for n in train_now if n not in FREE_TRAIN_FIELDS and n in train_then}
        )
        if rag_diff:
            plan.rag_config = RagConfig(
                **{**rag_now, **{n: rag_then[n] for n in rag_now if n not in FREE_RAG_FIELDS and n in rag_then}}
            )
    return plan


def check_resume(plan: ResumePlan, model, identity: dict[str, Any]) -> None:
    """Refuse (or warn about) a checkpoint of another model or set-up, per `config.resume_mismatch`.

    Call with the train mode applied. Order: trainable parameters (names, shapes), then the
    model's identity, then the RagConfig and TrainConfig.

    Raises:
        ValueError: A mismatch the configured `resume_mismatch` does not settle.
    """
    if plan.path is None:
        return
    mode, path = plan.config.resume_mismatch, plan.path
    ckpt.check_fingerprint(path, plan.manifest["fingerprint"], model)
    then = plan.manifest.get("identity") or {}
    changed = [k for k in ("weights", "configs", "tokenizers") if k in then and then[k] != identity[k]]
    if changed:
        what = {
            "weights": "frozen weights or buffers",
            "configs": "model configs or encoder settings",
            "tokenizers": "tokenizers",
        }
        detail = (
            f"resume: checkpoint {path} was written for another model: its {', '.join(what[k] for k in changed)}"
            f" differ (checkpoint models {then.get('models')}, now {identity['models']})"
        )
        if mode != "current":
            raise ValueError(
                f"{detail}; resume with the model the run started from, set "
                "resume_mismatch='current' to load its trainable parameters into this model anyway, "
                "or use a fresh output_dir"
            )
        warnings.warn(f"{detail}; resume_mismatch='current': loading it anyway", stacklevel=4)
    if plan.differences and mode == "error":
        raise ValueError(
            f"resume: checkpoint {path} was written with another set-up: {'; '.join(plan.differences)}. "
            "Set resume_mismatch='checkpoint' to continue with the recorded settings, "
            "resume_mismatch='current' to continue with yours, or use a fresh output_dir"
        )
    if plan.differences:
        winner = "the checkpoint's" if mode == "checkpoint" else "yours"
        warnings.warn(
            f"resume: {path} differs ({'; '.join(plan.differences)}); "
            f"resume_mismatch={mode!r}: continuing with {winner}",
            stacklevel=4,
        )


def check_collisions(output_dir: Path | None, run_id: str | None, start_step: int, total_steps: int) -> None:
    """Refuse a run that could overwrite another run's checkpoint in `output_dir` (before training).

    Raises:
        ValueError: A checkpoint of another run lies at a step in (start_step, total_steps].
    """
    if output_dir is None:
        return
    others = [
        i
        for i in map(ckpt.checkpoint_info, ckpt.list_checkpoints(output_dir))
        if i["run_id"] != run_id and start_step < i["step"] <= total_steps
    ]
    if not others:
        return
    names = [i["path"].name for i in others]
    raise ValueError(
        f"output_dir: {output_dir} holds checkpoints of another run ({names[:4]}{' ...' if len(names) > 4 else ''}, "
        f"run id {others[0]['run_id']!r}) that this run (run id {run_id!r}, steps {start_step + 1}..{total_steps}) "
        "would overwrite; use a fresh output_dir, resume='auto' to continue the newest run there, "
        "or move those checkpoints away"
    )
