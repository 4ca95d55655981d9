"""Per-epoch checkpoints of an add-task, so an interrupted add-task resumes exactly (spec:
``docs/formats.md``, "Checkpoint").

A ``torch.save`` file (format version 2; version 1 still resumes, a newer one is refused) of the
live network without its masks, the optimizer, schedule and random state, the best epoch so far,
an auto search under way, and a digest. :meth:`Checkpoint.check_identity` refuses a checkpoint of
another add-task (another task, ratio, dataset, setting or base pack).
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

from ..errors import PackFormatError, TaskError
from ..fileio import atomic_write, load_weights_only
from ..method import check_owners, without_masks
from ..progress import Say
from .digest import digest

FORMAT = "packtool.checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Settings that may differ between the interrupted and the resumed add-task (they do not change
# the arithmetic on CPU).
NEUTRAL_SETTINGS = ("device", "workers", "cache")
# Settings added after the first release, and the value a checkpoint without them had.
NEW_SETTINGS = {"amp": False}
_ORIG, _OWNERS = "_orig", "_owners"


def checkpoint_path(model: str | os.PathLike) -> Path:
    """Where the add-task job keeps the checkpoint of an add-task on ``model``: beside it."""
    model = Path(model)
    return model.with_name(model.name + ".add-task.ckpt")


def refit_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """Where a refit (``add-task --refit``) keeps its checkpoint: beside the first pass's."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".refit")


@dataclass
class Checkpoint:
    """The state of an add-task at the end of an epoch (see the module docstring); ``identity``
    is the file's ``run`` entry."""

    identity: dict[str, Any]
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
    search: dict[str, Any] | None = None
    released: dict[str, Tensor] | None = None
    scaler: dict[str, Any] | None = None  # float16 on CUDA: the gradient scaler's state
    best_is_net: bool = False  # best_state is the network as it is: stored once (format 2)
    # ``grow="auto"``'s decision, ``{"grow": fraction (0: none), "search": its trials}``, so a
    # resume does not repeat the trials (absent from checkpoints written before: they repeat)
    grown: dict[str, Any] | None = None

    def describe(self) -> str:
        config = self.identity["config"]
        train = self.phase == "train"
        total = config["epochs" if train else "finetune_epochs"]
        return (f"task {self.identity['task']!r} after {self.epoch} of {total} "
                f"{'training' if train else 'fine-tuning'} epochs")

    def save(self, path: str | os.PathLike) -> None:
        state = self.state()
        state["digest"] = digest(state)
        atomic_write(path, lambda f: torch.save(state, f))

    def state(self) -> dict[str, Any]:
        """What :meth:`save` writes (without the digest): tensors and plain values only, so a
        checkpoint can also travel inside another one (a paused search trial)."""
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "run": json.dumps(self.identity, sort_keys=True), "phase": self.phase,
            "epoch": self.epoch, "net": _stored(self.net),
            "optimizer": _on_cpu(self.optimizer), "scheduler": self.scheduler,
            "best_val": self.best_val, "best_is_net": self.best_is_net,
            "best_state": None if self.best_is_net else _stored(self.best_state),
            "metrics": dict(self.metrics),
            "rng": self.rng, "loader_rng": self.loader_rng, "cuda_rng": self.cuda_rng,
            "best_val_loss": self.best_val_loss, "search": _on_cpu(self.search),
            "released": _on_cpu(self.released), "scaler": self.scaler, "grown": self.grown,
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        try:
            state = load_weights_only(path)
        except Exception as exc:  # hostile or truncated bytes break the reader in many ways
            raise PackFormatError(
                f"checkpoint {path} is unreadable; delete it (or pass `restart=True`) to start "
                "over"
            ) from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise PackFormatError(f"{path} is not a packtool checkpoint")
        version = state.get("version")
        if version not in READABLE_VERSIONS:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise PackFormatError(
                f"checkpoint {path} has unsupported version {version!r}"
                + ("; it was written by a newer packtool" if newer else ""))
        try:
            _check(state)
            return cls.from_state(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PackFormatError(f"checkpoint {path} is damaged: {exc}") from exc

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Checkpoint:
        """The checkpoint :meth:`state` described (fields with defaults may be absent: they
        were added after the first release)."""
        fields = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        fields["identity"] = json.loads(state["run"])
        if fields.get("best_is_net"):
            fields["best_state"] = fields["net"]
        return cls(**fields)

    def check_identity(self, identity: dict[str, Any], path: str | os.PathLike) -> None:
        """Refuse to resume a different add-task; name what differs."""
        ours, theirs = _compared(self.identity), _compared(identity)
        if ours != theirs:
            differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            raise TaskError(
                f"checkpoint {path} belongs to another add-task ({', '.join(differ)} differ); "
                "rerun with the same options, or pass `restart=True` to discard it"
            )


def resume_point(path: str | os.PathLike | None, resume: bool, identity: dict[str, Any],
                 say: Say) -> Checkpoint | None:
    """The checkpoint an add-task of ``identity`` continues from (``None``: the beginning).

    Raises:
        TaskError: a checkpoint without ``resume`` (never silently used or overwritten), or a
            checkpoint of another add-task.
    """
    if path is None or not Path(path).exists():
        if resume:
            say("no checkpoint to resume from; starting from the beginning")
        return None
    if not resume:
        found = Checkpoint.load(path)
        raise TaskError(
            f"{path} holds an interrupted add-task ({found.describe()}); pass `resume=True` "
            "to continue it or `restart=True` to discard it"
        )
    start = Checkpoint.load(path)
    start.check_identity(identity, path)
    say(f"resuming {start.describe()}")
    return start


def _check(state: dict[str, Any]) -> None:
    """The digest (if the file has one) and the owner index of the network being trained."""
    if "digest" in state and state["digest"] != digest(
            {k: v for k, v in state.items() if k != "digest"}):
        raise ValueError("failed its checksum: the file is corrupted or was modified")
    net = state["net"]
    owners = {k[:-len(_OWNERS)]: v for k, v in net.items() if k.endswith(_OWNERS)}
    weights = {k: net[k + _ORIG] for k in owners}
    check_owners(weights, owners, int(json.loads(state["run"])["index"]))
    grown = state.get("grown")
    if grown is not None and not (isinstance(grown, dict) and isinstance(grown.get("search"), list)
                                  and isinstance(grown.get("grow"), (int, float))):
        raise ValueError("its growth decision is not {grow, search}")
    paused = (state.get("search") or {}).get("best")
    if isinstance(paused, dict) and "format" in paused:  # a paused trial: a checkpoint itself
        _check(paused)
        Checkpoint.from_state(paused)


def _compared(identity: dict[str, Any]) -> dict[str, Any]:
    compared = dict(identity)
    compared["config"] = {k: v for k, v in {**NEW_SETTINGS, **identity["config"]}.items()
                          if k not in NEUTRAL_SETTINGS}
    return compared


def _stored(state: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    """A network state as a checkpoint stores it: on the CPU, without the masks."""
    return None if state is None else without_masks(_on_cpu(state))


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested dicts and lists) on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_cpu(v) for v in value]
    return value
