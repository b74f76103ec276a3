"""Train/eval modes and `requires_grad` flags: switch them for a call, put them back exactly.

Boundary: module flags only (no maths, no I/O). An inference call switches
every sub-module to eval and afterwards restores each sub-module's *own*
previous mode, so a sub-module the user keeps in eval (a frozen generator)
never has its dropout turned on by `model.train(was_training)`. `eval_mode`
also holds each module's lock (see `locks.py`), so concurrent calls on shared
modules never see each other's mode switches.

Example:
    >>> with eval_mode(rag.generator, rag.question_encoder):  # doctest: +SKIP
    ...     answers = decode(...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from torch import nn

from .locks import model_lock

__all__ = ["eval_mode", "restore_modes", "restore_requires_grad", "snapshot_modes", "snapshot_requires_grad"]

Modes = dict[nn.Module, bool]


def snapshot_modes(*roots: nn.Module | None) -> Modes:
    """Module -> its `training` flag, for every module under `roots` (None roots skipped)."""
    return {m: m.training for root in roots if root is not None for m in root.modules()}


def restore_modes(modes: Modes, *, default_roots: tuple = (), default: bool | None = None) -> None:
    """Put back each recorded module's own `training` flag.

    Args:
        modes: From `snapshot_modes`.
        default_roots: Modules whose sub-modules missing from `modes` (added since the
            snapshot, e.g. LoRA layers) are set to `default`.
        default: The mode of such new sub-modules; None leaves them as they are.
    """
    for module, training in modes.items():  # first run any own `train` (it may clear caches, as DoRA's)
        if type(module).train is not nn.Module.train and module.training != training:
            module.train(training)
    for module, training in modes.items():  # then every module's own flag, children after parents
        module.training = training
    if default is not None:
        for root in default_roots:
            for m in root.modules():
                if m not in modes:
                    m.training = default


def snapshot_requires_grad(root: nn.Module) -> dict[nn.Parameter, bool]:
    """Parameter -> its `requires_grad` flag, for every parameter under `root`."""
    return {p: p.requires_grad for p in root.parameters()}


def restore_requires_grad(flags: dict[nn.Parameter, bool]) -> None:
    """Put back the `requires_grad` flags recorded by `snapshot_requires_grad`."""
    for p, flag in flags.items():
        p.requires_grad_(flag)


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Hold the locks of `modules` and run them in eval; restore every sub-module's own mode after.

    Locks are taken in one global order (by id), so callers that share some of
    the modules cannot deadlock. Modules already in eval are not touched, so
    calls on an eval model write no flag at all.

    Args:
        modules: The modules a call runs (None entries and repeats are ignored).
    """
    unique = list({id(m): m for m in modules if m is not None}.values())
    with ExitStack() as stack:
        for m in sorted(unique, key=id):
            stack.enter_context(model_lock(m))
        modes = snapshot_modes(*unique)
        changed = any(modes.values())
        if changed:
            for m in unique:
                m.eval()
        try:
            yield
        finally:
            if changed:
                restore_modes(modes)
