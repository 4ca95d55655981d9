"""The records a pack is made of: one per task, and the ownership of one layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class TaskRecord:
    """One task in a pack.

    Attributes:
        name: unique task name.
        index: 1-based task index; the owner value of the weights it owns.
        classes: class names in logit order (``len(classes)`` = head outputs).
        data: the data spec that rebuilds its dataset (see :func:`packtool.data.load_task_data`).
        prune: ratio of its trained weights released after training.
        hparams: training settings used.
        metrics: accuracies (fractions) before/after pruning and final, on the held-out split.
        created: ISO 8601 UTC time the task was added.
        head: classifier state, ``weight`` ``[classes, in_features]`` and ``bias`` ``[classes]``.
        private: task-private backbone state (biases, norm layers' parameters and statistics).
    """

    name: str
    index: int
    classes: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    prune: float = 0.0
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    head: dict[str, Tensor] = field(default_factory=dict, repr=False)
    private: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def meta(self) -> dict[str, Any]:
        """The record without tensors, as plain JSON-able values."""
        return {
            "name": self.name, "index": self.index, "classes": list(self.classes),
            "data": self.data, "prune": self.prune, "hparams": self.hparams,
            "metrics": self.metrics, "created": self.created,
        }


@dataclass(frozen=True)
class LayerCapacity:
    """Ownership of one prunable layer: ``free + sum(owned) == total``."""

    name: str
    total: int
    free: int
    owned: tuple[int, ...]  # owned[k-1]: weights owned by task k
