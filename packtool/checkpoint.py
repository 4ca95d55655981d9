"""Per-epoch checkpoints of an add-task run, so an interrupted run can resume exactly.

File format (format version 1): a ``torch.save`` file of tensors and plain values, read back with
``weights_only=True`` and written atomically::

    {
      "format": "packtool.checkpoint", "version": 1,
      "run": "<JSON>",        # identity: task, index, prune, data spec, settings, base pack digest
      "phase": "train" | "finetune", "epoch": int,    # last completed epoch of that phase
      "net": {state_dict of the live network},        # weight_orig, masks, owners, private, head
      "optimizer": {...} | None, "scheduler": {...} | None,
      "best_val": float, "best_val_loss": float,     # the best epoch's validation score
      "best_state": {state_dict} | None,
      "metrics": {"accuracy_before_prune": float, ...},
      "rng": uint8 tensor, "loader_rng": uint8 tensor, "cuda_rng": uint8 tensor | None,
    }

A checkpoint is only ever used for the run it belongs to: :meth:`Checkpoint.check_run` refuses
one whose identity differs (another task, ratio, dataset, setting or base pack).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import PackFormatError, TaskError
from .fileio import atomic_write, load_weights_only

FORMAT = "packtool.checkpoint"
FORMAT_VERSION = 1
# Settings that may differ between the interrupted and the resumed run (they do not change
# the arithmetic on CPU).
NEUTRAL_SETTINGS = ("device", "workers")


def checkpoint_path(model: str | os.PathLike) -> Path:
    """Where the CLI keeps the checkpoint of an add-task on ``model``: beside it."""
    model = Path(model)
    return model.with_name(model.name + ".add-task.ckpt")


@dataclass
class Checkpoint:
    """The state of an add-task run at the end of an epoch (see the module docstring)."""

    run: dict[str, Any]
    phase: str
    epoch: int
    net: dict[str, Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    best_val: float
    best_state: dict[str, Tensor] | None
    metrics: dict[str, float]
    rng: Tensor
    loader_rng: Tensor
    cuda_rng: Tensor | None = None
    best_val_loss: float = math.inf  # validation loss of best_state (breaks accuracy ties)

    def describe(self) -> str:
        total = self.run["config"]["epochs" if self.phase == "train" else "finetune_epochs"]
        return f"task {self.run['task']!r}, {self.phase} epoch {self.epoch}/{total}"

    def save(self, path: str | os.PathLike) -> None:
        state = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "run": json.dumps(self.run, sort_keys=True), "phase": self.phase,
            "epoch": self.epoch, "net": _cpu(self.net), "optimizer": self.optimizer,
            "scheduler": self.scheduler, "best_val": self.best_val,
            "best_state": _cpu(self.best_state) if self.best_state is not None else None,
            "metrics": dict(self.metrics), "rng": self.rng, "loader_rng": self.loader_rng,
            "cuda_rng": self.cuda_rng, "best_val_loss": self.best_val_loss,
        }
        atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        try:
            state = load_weights_only(path)
        except Exception as exc:  # hostile or truncated bytes break the reader in many ways
            raise PackFormatError(
                f"checkpoint {path} is unreadable; delete it (or pass --restart) to start over"
            ) from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise PackFormatError(f"{path} is not a packtool checkpoint")
        if state.get("version") != FORMAT_VERSION:
            raise PackFormatError(f"checkpoint {path} has unsupported version "
                                  f"{state.get('version')!r}")
        try:
            # Fields with defaults may be absent (checkpoints of an earlier packtool).
            fields = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
            fields["run"] = json.loads(state["run"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise PackFormatError(f"checkpoint {path} is damaged: {exc}") from exc

    def check_run(self, run: dict[str, Any], path: str | os.PathLike) -> None:
        """Refuse to resume a different run; name what differs."""
        ours, theirs = _identity(self.run), _identity(run)
        if ours != theirs:
            differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            raise TaskError(
                f"checkpoint {path} belongs to another add-task run ({', '.join(differ)} "
                "differ); rerun with the same options, or pass --restart to discard it"
            )


def _identity(run: dict[str, Any]) -> dict[str, Any]:
    identity = dict(run)
    identity["config"] = {k: v for k, v in run["config"].items() if k not in NEUTRAL_SETTINGS}
    return identity


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu") for k, v in state.items()}
