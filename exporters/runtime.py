"""onnxruntime sessions and ``predict``: run an exported task (or an archived one) on images.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU, and a session
asked for it there logs an error before falling back to the CPU. :func:`providers` therefore
asks for CUDA only when PyTorch can see a GPU too, and results report the provider that really
ran (``session.get_providers()[0]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from packtool.errors import PackFormatError, PackToolError, TaskError, one_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
BATCH_SIZE = 32  # images per onnxruntime call in predict


def providers() -> list[str]:
    """Execution providers to ask for, best first: CUDA only if it can really run, then CPU."""
    if torch.cuda.is_available() and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def session(model: str | os.PathLike | bytes, *,
            execution_providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session on a model file or serialized model bytes.

    Args:
        execution_providers: providers to ask for, best first; default :func:`providers`.

    Raises:
        PackFormatError: onnxruntime cannot load the model (not ONNX, damaged, unsupported).
    """
    source = "the model" if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            sess_options=ort.SessionOptions(),
            providers=list(execution_providers or providers()),
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise PackFormatError(
            f"onnxruntime cannot load {source}: {one_line(exc, first=True)}"
        ) from None


def provider_of(sess: ort.InferenceSession) -> str:
    """The provider that runs the session (the first one onnxruntime kept)."""
    return sess.get_providers()[0]


def run(sess: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Run the session's single input -> first output: float32 ``[N, ...]`` -> ``[N, ...]``."""
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(inputs, dtype=np.float32)})[0]


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


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
    # Imported here: onnx.py imports this module for its sessions.
    from packtool.data import Preprocess

    from .archive import read_archive
    from .onnx import TaskMetadata, task_onnx

    if top < 1:
        raise PackToolError(f"top must be at least 1, got {top}")
    source = Path(source)
    if not source.is_file():
        raise PackToolError(f"{source} does not exist")
    if _looks_like_safetensors(source):
        pack = read_archive(source)
        if task is None:
            raise TaskError(f"{source} is an archive of tasks {', '.join(pack.task_names)}: "
                            "choose one with --task")
        proto = task_onnx(pack, task)
        meta = TaskMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(source))
        sess = session(proto.SerializeToString())
    else:
        sess = session(source)
        meta = TaskMetadata.from_props(sess.get_modelmeta().custom_metadata_map, str(source))
        if task is not None and task != meta.task:
            raise TaskError(f"{source} holds task {meta.task!r}, not {task!r}")
    preprocess = Preprocess(meta.input_size, meta.mean, meta.std)
    top = min(top, len(meta.classes))
    predictions: list[dict[str, Any]] = []
    for start in range(0, len(images), BATCH_SIZE):
        paths = images[start:start + BATCH_SIZE]
        batch = torch.stack([preprocess.load_image(p) for p in paths]).numpy()
        logits = run(sess, batch)
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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, classes]`` logits, in float64 for stable small probabilities."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length then ``{``; ONNX (protobuf) cannot."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"
