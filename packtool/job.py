"""The file-level jobs: creating a model file (``packtool init``) and adding a task to one, the
whole of ``packtool add-task``.

:func:`add_task_to_file` is what the command line runs, available to Python callers too:

1. join the process group when launched by ``torchrun`` (one process otherwise);
2. lock MODEL (rank 0; a second writer fails at once), load it and the dataset;
3. train, prune and fine-tune with a per-epoch checkpoint beside MODEL
   (``<MODEL>.add-task.ckpt``), resuming it with ``resume=True`` or discarding it with
   ``restart=True``;
4. save MODEL atomically (rank 0) and delete the checkpoint.

Every step is agreed across ranks: if one rank fails (a bad file, a held lock), every rank
raises instead of waiting in a collective. MODEL changes only in step 4.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import TrainConfig
from .data import load_task_data
from .device import resolve_device
from .distributed import World
from .errors import PackToolError, TaskError
from .fileio import file_lock
from .formats import model_file
from .formats.checkpoint import Checkpoint, checkpoint_path, refit_checkpoint
from .formats.weights import read_weights
from .growth import DEFAULT_MAX_SIZE
from .lifecycle import add_task
from .models import PRETRAINED, pretrained_weights_file
from .pack import FREE_INITS, Pack
from .planner import Pruning
from .progress import Progress
from .records import TaskResult


def add_task_to_file(
    model: str | os.PathLike, data: str, prune: float | str,
    config: TrainConfig | None = None, *, settings: dict[str, Any] | None = None,
    reserve: int | None = None, tolerance: float = 1.0, auto_trials: int = 3,
    name: str | None = None,
    classes: Sequence[int | str] | None = None, data_root: str | os.PathLike | None = None,
    val_fraction: float = 0.1, skip_bad_images: bool = False, checkpoint_every: float = 0.0,
    resume: bool = False, restart: bool = False, progress: Progress | None = None,
    grow: float | str | None = None, max_size: float = DEFAULT_MAX_SIZE, refit: bool = False,
) -> tuple[Pack, TaskResult] | None:
    """Add a task to the pack in ``model`` and save it; see the module docstring.

    Without ``config``, the schedule follows the pack (:func:`packtool.config.schedule`) with
    ``settings`` on top. The pruning, growth and refit arguments are
    :func:`~.lifecycle.add_task`'s, the
    data ones :func:`packtool.data.load_task_data`'s (split seeded with ``config.seed``; every
    file's header is checked first, and ``skip_bad_images`` leaves unreadable ones out).
    ``resume`` continues the add-task interrupted in this file's checkpoint, ``restart``
    discards it. Returns ``(pack, result)`` on rank 0, ``None`` on the other ranks (which write
    and report nothing); a PackToolError leaves ``model`` as it was.
    """
    given = config
    config = config or TrainConfig(**(settings or {}))  # bad settings fail before MODEL is locked
    Pruning(prune, 0 if reserve is None else reserve, tolerance, auto_trials)
    if resume and restart:
        raise TaskError("use either `resume=True` or `restart=True`, not both")
    model = Path(model)
    if not model.is_file():
        model_file.load(model)  # the library's one-line error, before any lock file exists
    ckpt = checkpoint_path(model)
    with _process_group(config.device) as world, contextlib.ExitStack() as held:
        main = world is None or world.is_main
        device = distributed.rank_device(world, resolve_device(config.device))
        with _agreed(world, device):
            if main:
                held.enter_context(file_lock(model))
            pack = model_file.load(model)
            on_progress = progress.files_checked if progress is not None and main else None
            task_data = load_task_data(data, pack.preprocess, root=data_root, classes=classes,
                                       val_fraction=val_fraction, seed=config.seed,
                                       skip_bad_images=skip_bad_images, on_progress=on_progress)
            if main:
                _clear_checkpoint(ckpt, pack, restart)
        name = name or default_task_name(task_data.spec["data"], classes)
        pack, result = add_task(pack, name, task_data, prune, given, settings=settings,
                                reserve=reserve, tolerance=tolerance, auto_trials=auto_trials,
                                progress=progress, checkpoint=ckpt,
                                checkpoint_every=checkpoint_every, resume=resume,
                                grow=grow, max_size=max_size, refit=refit)
        with _agreed(world, device):
            if main:
                if progress is not None:
                    progress.message(f"saving {model}")
                model_file.save(pack, model)
                ckpt.unlink(missing_ok=True)
                refit_checkpoint(ckpt).unlink(missing_ok=True)
    return (pack, result) if main else None


def create_file(model: str | os.PathLike, arch: str, *,
                input_size: tuple[int, int, int] | None = None,
                kwargs: dict[str, Any] | None = None, weights: str | os.PathLike | None = None,
                policy: str = "per_task", free_init: str = FREE_INITS[0],
                planned_tasks: int | None = None, force: bool = False) -> Pack:
    """Create the model file ``model``: :meth:`Pack.create`, saved atomically.

    ``weights="DEFAULT"`` takes torchvision's pretrained weights from the local torch hub cache
    (nothing is downloaded). An existing ``model`` is refused unless ``force``; overwriting takes
    its lock, so it fails while an add-task is running on it.
    """
    model = Path(model)
    if model.exists() and not force:
        raise PackToolError(f"{model} already exists; pass `force=True` to overwrite it")
    pack = new_pack(arch, input_size=input_size, kwargs=kwargs, weights=weights, policy=policy,
                    free_init=free_init, planned_tasks=planned_tasks)
    with file_lock(model) if model.exists() else contextlib.nullcontext():
        model_file.save(pack, model)
    return pack


def new_pack(arch: str, *, input_size: tuple[int, int, int] | None = None,
             kwargs: dict[str, Any] | None = None, weights: str | os.PathLike | None = None,
             policy: str = "per_task", free_init: str = FREE_INITS[0],
             planned_tasks: int | None = None) -> Pack:
    """:func:`create_file`'s pack, in memory: :meth:`Pack.create` with ``weights`` read from a
    file (``"DEFAULT"``: torchvision's, from the local torch hub cache)."""
    if weights == PRETRAINED:
        weights = pretrained_weights_file(arch)
    state = None if weights is None else read_weights(weights)
    return Pack.create(arch, input_size, kwargs=kwargs, weights=state, policy=policy,
                       free_init=free_init, planned_tasks=planned_tasks)


def default_task_name(data: str, classes: Sequence[int | str] | None) -> str:
    """``digits``, ``digits-0-1``, ``digits-0to4``, ``birds`` (an image folder's name),
    ``shapes-circle-square`` (classes given by name, as given)."""
    base = Path(data).name if ("/" in data or os.sep in data) else data
    if not classes:
        return base
    runs: list[list[int | str]] = []
    for k in classes:
        last = runs[-1][-1] if runs else None
        if isinstance(k, int) and isinstance(last, int) and k == last + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    parts = [f"{r[0]}to{r[-1]}" if len(r) > 2 else "-".join(map(str, r)) for r in runs]
    return f"{base}-{'-'.join(parts)}"


def _clear_checkpoint(ckpt: Path, pack: Pack, restart: bool) -> None:
    """Drop a checkpoint the run must not see: on ``restart``, or one whose task is done.

    A run that saved MODEL but died before deleting its checkpoint leaves one behind; its task
    is already in the pack, so nothing can be resumed from it.
    """
    if restart:  # a refit's checkpoint goes with its first pass's
        refit_checkpoint(ckpt).unlink(missing_ok=True)
    if not ckpt.exists():
        return
    if restart:
        ckpt.unlink()
        return
    with contextlib.suppress(PackToolError):  # an unreadable one is reported by add_task
        found = Checkpoint.load(ckpt)
        index, task = found.identity.get("index"), found.identity.get("task")
        if isinstance(index, int) and index <= len(pack.tasks) \
                and pack.tasks[index - 1].name == task:
            ckpt.unlink()
            refit_checkpoint(ckpt).unlink(missing_ok=True)


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[World | None]:
    """The torchrun process group for the block: joined if needed, left if joined here."""
    joined = distributed.launched_by_torchrun() and not (
        torch.distributed.is_available() and torch.distributed.is_initialized())
    world = distributed.init_from_env(device)
    try:
        yield world
    finally:
        if joined and world is not None:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _agreed(world: World | None, device: torch.device) -> Iterator[None]:
    """Run the block on every rank; if it fails on any rank, raise on every rank."""
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:
        if world is None:
            raise
        error = exc
    if not distributed.all_ok(world, error is None, device):
        if error is not None:
            raise error
        raise PackToolError("another process of this torchrun job failed; see its error")
