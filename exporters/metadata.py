"""What an exported ONNX file says about itself: its inputs, outputs and ``packtool.*``
metadata (spec: ``docs/formats.md``, "Per-task ONNX" and "Multi-task ONNX"), written by
:mod:`.onnx` and :mod:`.multitask`, read by :mod:`.runtime`.

Torch-free (json and :class:`~packtool.data.preprocess.Preprocess`), so a serving machine reads
it with onnxruntime alone. Readers refuse files whose required keys are missing or inconsistent
(:class:`~packtool.errors.PackFormatError`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from packtool._version import __version__
from packtool.data.preprocess import Preprocess
from packtool.errors import PackFormatError, one_line

if TYPE_CHECKING:  # annotations only: this module runs without torch
    from packtool.pack import Pack
    from packtool.records import TaskRecord

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TASK_NAME = "task"  # a multi-task graph's second input
DISTANCE_NAME = "distance"  # a multi-task graph's second output (task-free scores)
TASKS_KEY = "packtool.tasks"
_OWN_KEYS = ("packtool.task", "packtool.classes", "packtool.resize", "packtool.temperature")


@dataclass(frozen=True)
class TaskMetadata:
    """The ``packtool.*`` metadata_props of an exported task (all values strings in the file)."""

    task: str
    classes: tuple[str, ...]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    version: str = __version__
    source_sha256: str = ""
    resize: int | None = None
    temperature: float | None = None
    #: The feature distance past which an input is none of the task's (multi-task files only:
    #: a per-task file has no distance output); ``None`` without one.
    reject_distance: float | None = None

    KEYS = ("packtool.task", "packtool.classes", "packtool.input_size", "packtool.mean",
            "packtool.std", "packtool.version", "packtool.source_sha256", "packtool.resize",
            "packtool.temperature")

    @classmethod
    def of(cls, pack: Pack, record: TaskRecord, source_sha256: str | None = None) -> TaskMetadata:
        spec = pack.spec
        return cls(record.name, tuple(record.classes), spec.input_size, spec.mean, spec.std,
                   __version__, source_sha256 or "", record.data.get("resize"),
                   record.temperature,
                   float(record.feature_stats["reject"]) if record.rejects else None)

    @property
    def preprocess(self) -> Preprocess:
        """How the task's images are prepared (what predict applies)."""
        return Preprocess(self.input_size, self.mean, self.std, self.resize)

    def to_props(self) -> dict[str, str]:
        return {
            "packtool.task": self.task,
            "packtool.classes": json.dumps(list(self.classes)),
            "packtool.input_size": "x".join(str(v) for v in self.input_size),
            "packtool.mean": json.dumps(list(self.mean)),
            "packtool.std": json.dumps(list(self.std)),
            "packtool.version": self.version,
            "packtool.source_sha256": self.source_sha256,
            **({"packtool.resize": str(self.resize)} if self.resize is not None else {}),
            **({"packtool.temperature": repr(self.temperature)}
               if self.temperature is not None else {}),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> TaskMetadata:
        """Parse metadata_props; PackFormatError if they are not a packtool task's."""
        missing = [k for k in cls.KEYS[:5] if k not in props]
        if missing:
            raise PackFormatError(
                f"{source} is not a packtool task model (no {', '.join(missing)} metadata); "
                "export one with `packtool export`"
            )
        try:
            classes = json.loads(props["packtool.classes"])
            size = tuple(int(v) for v in props["packtool.input_size"].split("x"))
            resize = int(props["packtool.resize"]) if "packtool.resize" in props else None
            mean = tuple(float(v) for v in json.loads(props["packtool.mean"]))
            std = tuple(float(v) for v in json.loads(props["packtool.std"]))
            temperature = (float(props["packtool.temperature"])
                           if "packtool.temperature" in props else None)
            if not (isinstance(classes, list) and classes and len(size) == 3
                    and len(mean) == len(std) == size[0]):
                raise ValueError("inconsistent values")
            if temperature is not None and not 0 < temperature < math.inf:
                raise ValueError(f"temperature {temperature} is not a positive number")
        except (ValueError, TypeError) as exc:
            raise PackFormatError(f"{source} has invalid packtool metadata: {exc}") from None
        return cls(props["packtool.task"], tuple(str(c) for c in classes), size,  # type: ignore[arg-type]
                   mean, std, props.get("packtool.version", ""),
                   props.get("packtool.source_sha256", ""), resize, temperature)


def is_multi_task(props: Mapping[str, str]) -> bool:
    """Whether ONNX ``metadata_props`` are a multi-task file's."""
    return TASKS_KEY in props


def multi_task_props(metas: list[TaskMetadata]) -> dict[str, str]:
    """A multi-task file's ``metadata_props`` for tasks ``metas`` (in index order)."""
    props = {k: v for k, v in metas[0].to_props().items() if k not in _OWN_KEYS}
    props[TASKS_KEY] = json.dumps([{"task": m.task, "classes": list(m.classes),
                                    "resize": m.resize, "temperature": m.temperature,
                                    "reject_distance": m.reject_distance}
                                   for m in metas])
    return props


def tasks_metadata(props: Mapping[str, str], source: str = "model") -> list[TaskMetadata]:
    """Every task's :class:`TaskMetadata` from a multi-task file's ``metadata_props``."""
    try:
        tasks = json.loads(props[TASKS_KEY])
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict)
                                                               for t in tasks):
            raise ValueError("packtool.tasks is not a list of tasks")
        common = {k: v for k, v in props.items() if k != TASKS_KEY}
        metas = []
        for t in tasks:
            own = {"packtool.task": t["task"], "packtool.classes": json.dumps(t["classes"])}
            for key in ("resize", "temperature"):
                if t.get(key) is not None:
                    own[f"packtool.{key}"] = str(t[key])
            meta = TaskMetadata.from_props({**common, **own}, source)
            reject = t.get("reject_distance")
            if reject is not None and not (type(reject) in (int, float) and
                                           0 < reject < math.inf):
                raise ValueError(f"reject_distance {reject!r} is not a positive number")
            metas.append(replace(meta, reject_distance=reject))
    except (KeyError, TypeError, ValueError) as exc:
        raise PackFormatError(f"{source} has invalid packtool.tasks metadata: "
                              f"{one_line(exc)}") from None
    return metas
