"""What an exported ONNX file holds (``packtool info FILE.onnx``): :func:`onnx_info` reads its
metadata (:mod:`.metadata`) and graph with onnxruntime alone, so a serving machine can ask."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .metadata import DISTANCE_NAME, TaskMetadata, is_multi_task, tasks_metadata
from .runtime import CPU, mixes_tasks, session


@dataclass
class OnnxInfo:
    """What an exported file holds (``packtool info FILE.onnx``); :meth:`to_dict` is its
    ``--json``.

    Attributes:
        kind: ``"per-task"`` or ``"multi-task"``.
        precision: ``"float32"``, or the reduced precision it was exported in.
        tasks: each task's metadata, in index order (one for a per-task file).
        task_free: whether the file answers ``--task auto`` (a multi-task file's distances).
        mixed_batches: whether a multi-task file takes one task per input row.
    """

    path: str
    bytes: int
    kind: str
    precision: str
    tasks: list[TaskMetadata]
    task_free: bool = False
    mixed_batches: bool = False

    def to_dict(self) -> dict[str, Any]:
        first = self.tasks[0]
        return {
            "path": self.path, "bytes": self.bytes, "kind": self.kind,
            "precision": self.precision, "version": first.version,
            "source_sha256": first.source_sha256, "input_size": list(first.input_size),
            "mean": list(first.mean), "std": list(first.std), "task_free": self.task_free,
            "mixed_batches": self.mixed_batches,
            "tasks": [{"task": m.task, "index": i, "classes": list(m.classes),
                       "resize": m.resize, "temperature": m.temperature,
                       "reject_distance": m.reject_distance}
                      for i, m in enumerate(self.tasks, start=1)],
        }


def onnx_info(path: str | os.PathLike) -> OnnxInfo:
    """What the exported ONNX file at ``path`` holds, read from its metadata and graph (the
    file is loaded by onnxruntime, which checks it; no torch)."""
    sess = session(path, execution_providers=[CPU])  # reading it needs no GPU
    props = sess.get_modelmeta().custom_metadata_map
    source = str(path)
    multi = is_multi_task(props)
    tasks = tasks_metadata(props, source) if multi else [TaskMetadata.from_props(props, source)]
    return OnnxInfo(source, os.path.getsize(path), "multi-task" if multi else "per-task",
                    props.get("packtool.precision", "float32"), tasks,
                    task_free=DISTANCE_NAME in [o.name for o in sess.get_outputs()],
                    mixed_batches=mixes_tasks(sess))
