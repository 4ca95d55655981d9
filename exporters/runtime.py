"""onnxruntime sessions: the execution providers to ask for, loading a model, inference.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU, and a session
asked for it there logs an error before falling back to the CPU. :func:`providers` therefore
asks for CUDA only when PyTorch can see a GPU too, and results report the provider that really
ran (``session.get_providers()[0]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from packtool.errors import PackFormatError, one_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


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


def infer(sess: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Run the session's single input -> first output: float32 ``[N, ...]`` -> ``[N, ...]``."""
    return infer_all(sess, inputs)[0]


def infer_all(sess: ort.InferenceSession, inputs: np.ndarray, task: int | None = None
              ) -> list[np.ndarray]:
    """Run the session on ``inputs`` -> every output, in the graph's order.

    ``task``: the 1-based task index a multi-task graph takes as its second input
    (:mod:`packtool.exporters.multitask`); ``None`` for a per-task graph.
    """
    names = [i.name for i in sess.get_inputs()]
    feed = {names[0]: np.ascontiguousarray(inputs, dtype=np.float32)}
    if task is not None:
        feed[names[1]] = np.array([task], dtype=np.int64)
    return sess.run(None, feed)


class OrtModule(nn.Module):
    """An onnxruntime session as a module from images to logits (on the CPU), so that
    :func:`packtool.evaluate.precision_change` measures an ONNX file like a network."""

    def __init__(self, sess: ort.InferenceSession) -> None:
        super().__init__()
        self.session = sess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(infer(self.session, x.detach().cpu().numpy()))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, classes]`` logits, in float64 for stable small probabilities."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
