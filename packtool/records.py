"""The records of a pack: one per task, the ownership of one layer, and what adding a task
reports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TaskRecord:
    """One task in a pack.

    Attributes:
        name: unique task name.
        index: 1-based task index; the owner value of the weights it owns.
        classes: class names in logit order (``len(classes)`` = head outputs).
        data: the data spec that rebuilds its dataset (see :func:`packtool.data.load_task_data`).
        prune: ratio of its trained weights released after training (for ``auto``, the one
            chosen).
        prune_reason: why that ratio: ``fixed`` (given), ``reserve`` (raised, or chosen, to
            leave room for more tasks) or ``tolerance`` (the largest within the tolerance).
        prune_search: for ``auto``, every candidate ratio and its validation accuracies
            (:class:`packtool.planner.Candidate`); empty otherwise.
        temperature: the softmax temperature fitted on the task's validation split when it was
            added (:func:`packtool.taskfree.fit_temperature`), so that task-free inference can
            compare heads trained alone; ``None`` in files written before calibration (read as
            1).
        hparams: training settings used.
        metrics: accuracies (fractions) before/after pruning and final, on the held-out split.
        created: ISO 8601 UTC time the task was added.
        head: classifier state, ``weight`` ``[classes, in_features]`` and ``bias`` ``[classes]``.
        feature_stats: for the ``mahalanobis`` task score, fitted on validation with the
            temperature (:func:`packtool.taskfree.fit_feature_stats`): ``means``
            ``[classes seen, in_features]``, ``basis`` ``[r, in_features]`` and ``scale``
            ``[1]``, float32, and ``reject`` ``[1]``, the distance past which an input is none
            of the task's (:func:`packtool.taskfree.fit_reject_distance`; from format 5, where
            ``means`` and ``basis`` are stored as int8 rows); empty in files written before
            them.
        private: task-private backbone state (biases, norm layers' parameters and statistics).
        widths: the growable widths the task runs at (producer -> units), where the network had
            grown by the time it was added (:mod:`packtool.growth`); empty otherwise.
        grow_search: with ``grow="auto"``, its trials ``[{"grow", "val_accuracy"}]`` (the first
            without growth); empty otherwise.
    """

    name: str
    index: int
    classes: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    prune: float = 0.0
    prune_reason: str = "fixed"
    prune_search: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    head: dict[str, Tensor] = field(default_factory=dict, repr=False)
    private: dict[str, Tensor] = field(default_factory=dict, repr=False)
    feature_stats: dict[str, Tensor] = field(default_factory=dict, repr=False)
    widths: dict[str, int] = field(default_factory=dict)
    grow_search: list[dict[str, float]] = field(default_factory=list)

    def check(self) -> None:
        """ValueError unless the head has one row per class, the temperature (if any) is a
        positive finite number and the feature statistics (if any) fit the head's input."""
        weight = self.head.get("weight", torch.empty(0))
        if weight.dim() != 2 or len(weight) != len(self.classes):
            raise ValueError(f"task {self.name!r} has no head for its {len(self.classes)} classes")
        t = self.temperature
        if t is not None and not (type(t) in (int, float) and 0 < t < math.inf):
            raise ValueError(f"task {self.name!r} has an invalid temperature {t!r}")
        if not self.feature_stats:
            return
        features = weight.shape[1]
        stats = self.feature_stats
        means, basis, scale = (stats.get(k, torch.empty(0)) for k in ("means", "basis", "scale"))
        reject = stats.get("reject", torch.ones(1))
        if (set(stats) - {"reject"} != {"means", "basis", "scale"} or means.dim() != 2
                or basis.dim() != 2 or reject.shape != (1,) or not float(reject) > 0
                or not 1 <= len(means) <= len(self.classes) or means.shape[1] != features
                or basis.shape[1] != features or scale.shape != (1,) or not float(scale) > 0
                or not all(v.is_floating_point() and bool(v.isfinite().all())
                           for v in (means, basis, scale, reject))):
            raise ValueError(f"task {self.name!r} has invalid feature statistics")

    def meta(self) -> dict[str, Any]:
        """The record without tensors, as plain JSON-able values."""
        return {
            "name": self.name, "index": self.index, "classes": list(self.classes),
            "data": self.data, "prune": self.prune, "hparams": self.hparams,
            "metrics": self.metrics, "created": self.created,
            **self.versioned_meta(),
        }

    @property
    def stored_values(self) -> int:
        """Values stored for this task alone: its head and its private state (none for tasks
        after the first under policy ``frozen``)."""
        return sum(v.numel() for part in (self.head, self.private) for v in part.values())

    def versioned_meta(self) -> dict[str, Any]:
        """The metadata that older formats cannot hold, where it says more than their defaults:
        ``prune_reason`` and ``prune_search`` (format 2), ``temperature`` (format 3),
        ``widths`` and ``grow_search`` (format 4)."""
        found: dict[str, Any] = {}
        if self.prune_reason != "fixed":
            found["prune_reason"] = self.prune_reason
        if self.prune_search:
            found["prune_search"] = self.prune_search
        if self.temperature is not None:
            found["temperature"] = self.temperature
        if self.widths:
            found["widths"] = dict(self.widths)
        if self.grow_search:
            found["grow_search"] = list(self.grow_search)
        return found

    @property
    def rejects(self) -> bool:
        """Whether the task has a rejection threshold (its feature statistics' ``reject``)."""
        return "reject" in self.feature_stats

    @property
    def format_version(self) -> int:
        """The oldest model file format that holds this record: 1 without
        :meth:`versioned_meta`, 2 with a planner's record, 3 with a temperature or feature
        statistics, 4 with widths (a grown network), 5 with a rejection threshold (and int8
        feature statistics). Files are written in the oldest version that holds them,
        so older packtools keep reading what they can and refuse the rest as too new instead
        of misreading it."""
        found = self.versioned_meta()
        if self.rejects:
            return 5
        if "widths" in found or "grow_search" in found:
            return 4
        return 3 if "temperature" in found or self.feature_stats else 2 if found else 1


def format_version(tasks: list[TaskRecord]) -> int:
    """The format version of a model file holding ``tasks``."""
    return max((t.format_version for t in tasks), default=1)


#: Feature statistics stored as int8 rows where a task has a rejection threshold (format 5):
#: the fit rounds them to such values (:func:`packtool.taskfree.fit_feature_stats`).
INT8_STATS = ("means", "basis")


def int8_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` ``[R, D]`` as int8 ``[R, D]`` and a float32 step per row ``[R]``, ``t ~ q * step``:
    the step is the power of two that fits the row's largest value in 127 steps, so that
    :func:`from_int8_rows` is exact and coding its result again gives the same bytes."""
    t = t.detach().float()
    top = t.abs().amax(1) if t.shape[1] else t.new_zeros(len(t))
    step = torch.where(top > 0, torch.exp2(torch.ceil(torch.log2(top / 127))), 1.0)
    return torch.round(t / step[:, None]).clamp(-127, 127).to(torch.int8), step


def from_int8_rows(q: Tensor, step: Tensor) -> Tensor:
    """The float32 rows of :func:`int8_rows`' output."""
    return (q.float() * step.float()[:, None]).contiguous()


def stored_stats(record: TaskRecord) -> dict[str, Tensor]:
    """``record``'s feature statistics as files store them: :data:`INT8_STATS` as int8 rows
    and their ``<name>_step`` where the task has a rejection threshold (their values are such
    rows already), else as they are."""
    stats = dict(record.feature_stats)
    if record.rejects:
        for key in INT8_STATS:
            stats[key], stats[f"{key}_step"] = int8_rows(stats[key])
    return stats


def read_stats(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """Stored feature statistics as a record holds them: float32 rows."""
    stats = dict(stats)
    for key in INT8_STATS:
        if f"{key}_step" in stats:
            stats[key] = from_int8_rows(stats[key], stats.pop(f"{key}_step"))
    return stats


@dataclass(frozen=True)
class LayerCapacity:
    """Ownership of one prunable layer: ``free + sum(owned) == total``; ``shape`` is the
    weight's (the widest, in a grown network)."""

    name: str
    total: int
    free: int
    owned: tuple[int, ...]  # owned[k-1]: weights owned by task k
    shape: tuple[int, ...] = ()


@dataclass
class TaskResult:
    """What :func:`add_task` reports; the same numbers are stored in the task record (but
    ``prune_warning``, the planner's note that validation was too coarse to be sure, and
    ``accuracy_warning``, that the test accuracy is no better than chance)."""

    task: str
    index: int
    accuracy: float
    accuracy_before_prune: float
    accuracy_after_prune: float
    val_accuracy: float
    weights_owned: int
    free_fraction: float
    seconds: float
    prune: float = 0.0
    prune_reason: str = "fixed"
    prune_search: list[dict[str, Any]] | None = None
    prune_warning: str | None = None
    accuracy_warning: str | None = None
    skipped_images: int = 0
    temperature: float | None = None
    widths: dict[str, int] | None = None
    skipped_files: list[str] = field(default_factory=list)
    grow_search: list[dict[str, float]] | None = None
    #: ``{"validation"|"test": [class names]}``: the classes a split has no image of (a small
    #: folder may leave one out; that split's accuracy then leaves it out).
    missing_classes: dict[str, list[str]] | None = None

    #: The notes a task may come with, in the library's words (`name` for an argument).
    WARNING_KEYS = ("prune_warning", "accuracy_warning")
    #: The keys of ``add-task --json`` (``val_accuracy`` is in the task record only).
    DOCUMENT_KEYS = ("task", "index", "accuracy", "accuracy_before_prune",
                     "accuracy_after_prune", "weights_owned", "free_fraction", "seconds",
                     "prune", "prune_reason", "skipped_images", "skipped_files", "temperature")

    def to_dict(self) -> dict[str, Any]:
        """``packtool add-task --json``: :data:`DOCUMENT_KEYS`, ``prune_search`` and
        ``prune_warning`` where the planner gave them, ``accuracy_warning`` where the task
        learned little, ``widths`` where the network grew,
        ``grow_search`` with ``grow="auto"`` and ``missing_classes`` where a split lacks a
        class."""
        values = asdict(self)
        doc = {key: values[key] for key in self.DOCUMENT_KEYS}
        for key in ("prune_search", *self.WARNING_KEYS, "widths", "grow_search",
                    "missing_classes"):
            if values[key] is not None:
                doc[key] = values[key]
        return doc
