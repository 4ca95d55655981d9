"""The settings of an add-task (:class:`TrainConfig`).

A TrainConfig is checked when it is made, once: a config that exists is a valid one. Whether
the device it names is there is asked when it is used (:func:`packtool.device.resolve_device`):
this module imports no torch, so a plan file is checked before the training stack loads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .choices import OPTIMIZERS, PRUNE_SCOPES
from .errors import PackToolError, TaskError, UsageError

if TYPE_CHECKING:
    import torch

#: The schedule for a network without pretrained weights. TrainConfig's defaults are the paper's
#: (fine-tuning a pretrained VGG-16: lr 1e-3, then 1e-4), which leave a network trained from
#: scratch near chance after a few epochs; these rates are the benchmarks' (digits from scratch).
FROM_SCRATCH = {"lr": 0.05, "finetune_lr": 0.005}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one add-task. Defaults follow the paper's official scripts.

    Attributes:
        epochs: training epochs on the free weights (0 skips training, e.g. a pretrained task).
        finetune_epochs: epochs of fine-tuning the kept weights after pruning.
        lr, finetune_lr: learning rates of the two phases.
        lr_decay_epochs: multiply the training lr by 0.1 every this many epochs (0: never).
        optimizer: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``.
        weight_decay: applied by the optimizer; frozen weights are protected by the guard.
        batch_size, workers: data loading; ``workers="auto"`` picks them per dataset
            (:func:`loader_settings`).
        amp: mixed precision: bfloat16 autocast on the CPU, float16 with a gradient scaler on
            CUDA (bfloat16 where the GPU has it); weights stay float32.
        cache: keep the task's images decoded and resized in memory when they fit:
            ``"auto"`` (a budget of :func:`cache_budget`), ``"none"``, or a budget in GB.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds head initialization, dropout, shuffling and augmentation; same seed, same
            CPU result, whatever ``workers`` and ``cache`` are (:mod:`packtool.data.sampling`).
        prune_scope: ``layer`` (exact ratio per layer, the paper) or ``global`` (across layers).

    Raises:
        TaskError: a setting out of range; PackToolError: a device name that is none of these
        (one that is not there is refused when it is used).
    """

    epochs: int = 20
    finetune_epochs: int = 10
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    lr_decay_epochs: int = 10
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    workers: int | str = "auto"
    device: str = "auto"
    seed: int = 0
    prune_scope: str = "layer"
    amp: bool = False
    cache: str | float = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0 and self.finetune_epochs >= 0, "epochs must be >= 0"),
            (self.lr > 0 and self.finetune_lr > 0, "learning rates must be > 0"),
            (self.lr_decay_epochs >= 0, "lr_decay_epochs must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight decay >= 0"),
            (self.batch_size >= 1, "batch size must be >= 1"),
            (self.workers == "auto" or (isinstance(self.workers, int) and self.workers >= 0),
             "workers must be >= 0 or 'auto'"),
            (self.prune_scope in PRUNE_SCOPES, "prune scope must be layer or global"),
            (self.cache in ("auto", "none") or (isinstance(self.cache, (int, float))
                                                and self.cache >= 0),
             "cache must be 'auto', 'none' or a number of GB >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise TaskError(message)
        check_device_name(self.device)


def schedule(pretrained: bool, settings: dict | None = None) -> tuple[TrainConfig, str | None]:
    """The TrainConfig for a pack, with ``settings`` (explicit choices) on top of the defaults:
    the paper's schedule for ``pretrained`` weights, else :data:`FROM_SCRATCH`'s rates. Returns
    it and, when the from-scratch rates were used, a note saying so."""
    settings = dict(settings or {})
    if pretrained:
        return TrainConfig(**settings), None
    chosen = {k: v for k, v in FROM_SCRATCH.items() if k not in settings}
    config = TrainConfig(**{**chosen, **settings})
    if not chosen:
        return config, None
    rates = ", ".join(f"{k} {v:g}" for k, v in chosen.items())
    return config, (f"no pretrained weights: training from scratch with {rates} (the paper's "
                    "rates, for fine-tuning pretrained weights, would stay near chance); give "
                    "`lr` and `finetune_lr` to choose")


def check_trains(epochs: int, finetune_epochs: int, *, pretrained_head: bool) -> None:
    """A task must train at all: with both epoch counts 0 it would keep an untrained head (and,
    from scratch, random weights), unless it is a pretrained network's first task, whose head
    comes with the weights (the paper's first task: prune, fine-tune or not).

    Raises:
        UsageError: both counts 0 and no pretrained head for the task.
    """
    if epochs or finetune_epochs or pretrained_head:
        return
    raise UsageError("this task would not train at all: `epochs` and `finetune_epochs` are both "
                     "0 and no pretrained weights come with its head; give at least one epoch")


#: Datasets up to this size load in the training process with ``workers="auto"``: starting
#: worker processes costs more than they save there.
SMALL_DATASET = 512


def loader_settings(workers: int | str, dataset: Sized, device: torch.device,
                    in_memory: bool = False) -> dict[str, Any]:
    """DataLoader keyword arguments that fit the machine.

    ``workers="auto"``: none for data already in memory or small (:data:`SMALL_DATASET`), else
    the CPUs this process may use, at most 8. Workers persist across epochs and prefetch; on
    CUDA, batches go to pinned memory (the training loop copies them without blocking).
    """
    if workers == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        workers = 0 if in_memory or len(dataset) <= SMALL_DATASET else min(cpus, 8)
    settings: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        settings.update(persistent_workers=True, prefetch_factor=4)
    return settings


def cache_budget(cache: str | float) -> float:
    """Bytes the decoded-image cache may take: ``"auto"`` is a quarter of the memory available
    now, at most 4 GiB; ``"none"`` is 0; a number is GB."""
    if cache == "none":
        return 0.0
    if cache != "auto":
        return float(cache) * 1e9
    available = 4 * 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return min(available / 4, 4 * 2**30)


#: ``auto``, ``cpu`` or ``cuda``, with a device index or not (``auto`` without).
DEVICE_NAME = re.compile(r"auto|(cpu|cuda)(:[0-9]+)?")


def check_device_name(device: str) -> None:
    """Refuse a device name that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE_NAME.fullmatch(str(device)):
        raise PackToolError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N")
