"""``predict``: classify image files with an exported task, or with a task of an archive.

An ``.onnx`` file brings its classes and preprocessing in its metadata; an archive's task is
rebuilt, exported to ONNX in memory and run the same way, so both give the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packtool.errors import PackFormatError, PackToolError, TaskError
from packtool.formats.archive import read_archive
from packtool.formats.sniff import is_safetensors

from .onnx import TaskMetadata, task_onnx
from .runtime import infer, provider_of, session, softmax

BATCH_SIZE = 32  # images per onnxruntime call


@dataclass
class PredictResult:
    """What :func:`predict` returns; :meth:`to_dict` is ``packtool predict --json``.

    Attributes:
        task: the task that ran.
        provider: the onnxruntime execution provider that ran it.
        predictions: per image in input order, ``{"image": path, "top": [{"class",
            "probability"}, ...]}`` with ``top`` sorted by probability, highest first.
    """

    task: str
    provider: str
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "provider": self.provider, "predictions": self.predictions}


def predict(source: str | os.PathLike, images: Sequence[str | os.PathLike], *,
            task: str | None = None, top: int = 5) -> PredictResult:
    """Classify ``images`` with one task from an exported ``.onnx`` or an archive.

    An ``.onnx`` file brings its classes and preprocessing in its metadata (``task``, if given,
    must match it). An archive needs ``task``: the task is rebuilt from the archive, exported to
    ONNX in memory and run with onnxruntime. Images are resized to the input size, scaled to
    0..1 and normalized, as the ONNX contract says (:meth:`packtool.data.Preprocess.load_image`).

    Args:
        top: how many classes to report per image (clamped to the number of classes).

    Returns:
        softmax probabilities of the ``top`` most likely classes per image.
    """
    if top < 1:
        raise PackToolError(f"top must be at least 1, got {top}")
    source = Path(source)
    if not source.is_file():
        raise PackToolError(f"{source} does not exist")
    if is_safetensors(source):
        pack = read_archive(source)
        if task is None:
            raise TaskError(f"{source} is an archive of tasks {', '.join(pack.task_names)}: "
                            "choose one with `task`")
        proto = task_onnx(pack, task)
        meta = TaskMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(source))
        sess = session(proto.SerializeToString())
    else:
        sess = session(source)
        meta = TaskMetadata.from_props(sess.get_modelmeta().custom_metadata_map, str(source))
        if task is not None and task != meta.task:
            raise TaskError(f"{source} holds task {meta.task!r}, not {task!r}")
    preprocess = meta.preprocess
    top = min(top, len(meta.classes))
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(images), BATCH_SIZE):
        paths = images[start:start + BATCH_SIZE]
        batch = torch.stack([preprocess.load_image(p) for p in paths]).numpy()
        logits = infer(sess, batch)
        if logits.ndim != 2 or logits.shape[1] != len(meta.classes):
            raise PackFormatError(f"{source} outputs shape {list(logits.shape)}, expected "
                                  f"[batch, {len(meta.classes)}] for its classes")
        for path, probs in zip(paths, softmax(logits)):
            order = np.argsort(-probs, kind="stable")[:top]  # ties: lower class index first
            predictions.append({
                "image": str(path),
                "top": [{"class": meta.classes[i], "probability": float(probs[i])} for i in order],
            })
    return PredictResult(task=meta.task, provider=provider_of(sess), predictions=predictions)
