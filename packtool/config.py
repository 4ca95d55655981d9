"""The settings of an add-task (:class:`TrainConfig`) and the device they name.

A TrainConfig is checked when it is made, once: a config that exists is a valid one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PackToolError, TaskError

OPTIMIZERS = ("sgd", "adam", "adamw")
PRUNE_SCOPES = ("layer", "global")


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
        batch_size, workers: data loading.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds head initialization, dropout and shuffling; same seed, same CPU result.
        prune_scope: ``layer`` (exact ratio per layer, the paper) or ``global`` (across layers).

    Raises:
        TaskError: a setting out of range; PackToolError: a device that is not there.
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
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    prune_scope: str = "layer"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0 and self.finetune_epochs >= 0, "epochs must be >= 0"),
            (self.lr > 0 and self.finetune_lr > 0, "learning rates must be > 0"),
            (self.lr_decay_epochs >= 0, "lr_decay_epochs must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight decay >= 0"),
            (self.batch_size >= 1 and self.workers >= 0, "batch size >= 1 and workers >= 0"),
            (self.prune_scope in PRUNE_SCOPES, "prune scope must be layer or global"),
        ]
        for ok, message in checks:
            if not ok:
                raise TaskError(message)
        resolve_device(self.device)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA if available else CPU; a CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise PackToolError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PackToolError("CUDA was requested but is not available; use `device=cpu` or "
                            "`device=auto`")
    if dev.type not in ("cpu", "cuda"):
        raise PackToolError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev
