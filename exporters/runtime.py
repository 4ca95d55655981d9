"""Serving exported ONNX files with onnxruntime, numpy and Pillow only: no torch.

::

    from packtool.exporters.runtime import predict

    result = predict("cars.onnx", ["photo.jpg"], top=3)          # a per-task file
    result = predict("pack.onnx", ["a.jpg", "b.jpg"], task="auto")  # a multi-task file
    print(result.to_dict())                                      # `packtool predict --json`

A serving machine needs only this module's imports (see the README's "Deploying"): images are
prepared as the file's metadata says (:mod:`.metadata`), with the same numpy and Pillow routine
that training and ``packtool eval`` use (:class:`packtool.data.preprocess.Preprocess`), and
``task="auto"`` tells the task with :mod:`packtool.task_id`, as ``eval --task-free`` does.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU, and a session
asked for it there logs an error before falling back to the CPU. :func:`providers` therefore
asks for CUDA only when the CUDA driver sees a GPU, and results report the provider that really
ran (``session.get_providers()[0]``).
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from packtool.choices import AUTO
from packtool.data.preprocess import Preprocess, image_files
from packtool.errors import (
    DataError,
    PackFormatError,
    PackToolError,
    TaskChoiceError,
    TaskError,
    one_line,
)
from packtool.progress import Say, silent
from packtool.task_id import (
    check_score,
    default_score_for,
    identify,
    reject_ratios,
    task_scores,
)

from .metadata import DISTANCE_NAME, TaskMetadata, is_multi_task, tasks_metadata

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
BATCH_SIZE = 32  # images per onnxruntime call


def cuda_devices() -> int:
    """How many GPUs the CUDA driver sees (0 without a driver or a GPU), asked of ``libcuda``
    itself: the runtime does not need torch to know."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def providers() -> list[str]:
    """Execution providers to ask for, best first: CUDA only if it can really run, then CPU."""
    if CUDA in ort.get_available_providers() and cuda_devices() > 0:
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


def infer_all(sess: ort.InferenceSession, inputs: np.ndarray,
              task: int | Sequence[int] | None = None) -> list[np.ndarray]:
    """Run the session on ``inputs`` -> every output, in the graph's order.

    ``task``: the 1-based task index a multi-task graph takes as its second input
    (:mod:`.metadata`), or one per row (a file that takes mixed-task batches,
    :func:`mixes_tasks`); ``None`` for a per-task graph.
    """
    names = [i.name for i in sess.get_inputs()]
    feed = {names[0]: np.ascontiguousarray(inputs, dtype=np.float32)}
    if task is not None:
        feed[names[1]] = np.array([task] if isinstance(task, int) else task,
                                  dtype=np.int64).reshape(-1)
    return sess.run(None, feed)


def mixes_tasks(sess: ort.InferenceSession) -> bool:
    """Whether a multi-task graph takes one task per row (``task`` ``[N]``); files written
    before mixed-task batches take one task per call (``[1]``)."""
    inputs = sess.get_inputs()
    return len(inputs) > 1 and not isinstance(inputs[1].shape[0], int)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, classes]`` logits, in float64 for stable small probabilities."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


@dataclass
class PredictResult:
    """What :func:`predict` returns; :meth:`to_dict` is ``packtool predict --json``.

    Attributes:
        task: the task that ran; with ``auto``, the group's chosen task under ``same_task``,
            else ``None`` (each prediction names its own).
        provider: the onnxruntime execution provider that ran it.
        predictions: per image in input order, ``{"image": path, "top": [{"class",
            "probability"}, ...]}`` with ``top`` sorted by probability, highest first; with
            ``auto`` also ``"task"`` (the chosen task; ``None`` for an image rejected as none
            of the tasks') and ``"task_margin"`` (its score minus the runner-up's; ``None`` with
            one task), and with ``reject`` ``"distance"`` and ``"reject_ratio"``.
        task_score: with ``auto``, the score that chose the tasks; else ``None``.
        skipped_files: with ``skip_bad_images``, the files left out as unreadable (``None``
            without it: any unreadable file is an error).
    """

    task: str | None
    provider: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    task_score: str | None = None
    skipped_files: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = {"task": self.task, "provider": self.provider, "predictions": self.predictions}
        if self.task_score is not None:
            doc["task_score"] = self.task_score
        if self.skipped_files is not None:
            doc["skipped_files"] = self.skipped_files
        return doc


@dataclass
class _Runner:
    """One task ready to run: its metadata, its onnxruntime session and, in a multi-task
    session, its 1-based index (the ``task`` input)."""

    meta: TaskMetadata
    session: ort.InferenceSession
    index: int | None = None


def predict(model: str | os.PathLike | bytes, images: Sequence[str | os.PathLike], *,
            task: str | None = None, top: int = 5, same_task: bool = False,
            task_score: str | None = None, reject: bool = False, source: str | None = None,
            skip_bad_images: bool = False, say: Say = silent) -> PredictResult:
    """Classify ``images`` (image files; a folder stands for the images below it,
    :func:`~packtool.data.preprocess.image_files`) with an exported ONNX file (a path, or its
    bytes), or let ``task="auto"`` choose the task of a multi-task file.

    A per-task file brings its classes and preprocessing in its metadata (``task``, if given,
    must match it); a multi-task file needs ``task``. Images are prepared as the task's
    metadata says (:meth:`packtool.data.preprocess.Preprocess.load_image`).

    Args:
        task: the task to run, or ``"auto"`` (a multi-task file): every task runs and each
            image goes to the task with the best ``task_score`` after the tasks' temperatures.
        top: how many classes to report per image (clamped to the number of classes).
        same_task: with ``auto``, the images come from one task: it is chosen by their summed
            scores.
        task_score: ``entropy``, ``max-prob``, ``energy`` or ``mahalanobis``
            (:mod:`packtool.task_id`); default: ``mahalanobis`` where the file has feature
            distances, else ``entropy``.
        reject: with ``auto`` (and the ``mahalanobis`` score): an image whose feature distance
            to its chosen task passes that task's threshold (fitted on validation, in the
            file's metadata) is none of the tasks': its ``task`` is ``None`` and ``top``
            empty. Every prediction then carries ``distance`` (to its nearest task) and
            ``reject_ratio``, the distance over that task's threshold (above 1: rejected).
        source: how messages name the model (default: its path).
        skip_bad_images: leave out the files that cannot be read as images (listed in the
            result's ``skipped_files``) instead of failing on the first one; at least one
            must be readable.
        say: receives a line of progress per batch of images.

    Returns:
        softmax probabilities of the ``top`` most likely classes per image.
    """
    _check_options(task, top, same_task, task_score, reject)
    label = source or ("the model" if isinstance(model, bytes) else str(model))
    if not isinstance(model, bytes) and not os.path.isfile(model):
        raise PackToolError(f"{label} does not exist")
    images = image_files(images)
    runners, task_score = _runners(session(model), task, task_score, label)
    say(f"{label}: running on {provider_of(runners[0].session)}")
    skipped: list[str] | None = [] if skip_bad_images else None
    logits, distances, images = _outputs(runners, images, label, say, skipped)
    if task != AUTO:
        return PredictResult(runners[0].meta.task, provider_of(runners[0].session),
                             _predictions(images, runners, logits, [0] * len(images), top),
                             skipped_files=skipped)
    assert task_score is not None
    if reject and task_score != "mahalanobis":
        raise TaskError(f"{label} has no feature distances: reject needs them (export the pack "
                        "again)")
    predictions, first = _by_task_score(images, runners, logits, distances, task_score, top,
                                        same_task, reject)
    return PredictResult(runners[first].meta.task if same_task else None,
                         provider_of(runners[0].session), predictions, task_score, skipped)


def _by_task_score(images: Sequence[str | os.PathLike], runners: list[_Runner],
                   logits: list[np.ndarray], distances: list[np.ndarray], task_score: str,
                   top: int, same_task: bool, reject: bool) -> tuple[list[dict[str, Any]], int]:
    """``task="auto"``'s predictions: each image (or, ``same_task``, all of them) goes to the
    task the score chooses; returns them and the first image's task (runner position)."""
    temperatures = [1.0 if r.meta.temperature is None else r.meta.temperature for r in runners]
    scores = task_scores(logits, temperatures, task_score, distances)
    chosen = identify(scores, np.zeros(len(images), dtype=np.int64) if same_task else None)
    choice = chosen.task.tolist()
    predictions = _predictions(images, runners, logits, choice, top, named=True)
    for p, margin in zip(predictions, chosen.margin.tolist()):
        p["task_margin"] = None if math.isnan(margin) else margin
    if reject:
        _reject(predictions, distances, chosen.task, runners)
    return predictions, choice[0]


def _check_options(task: str | None, top: int, same_task: bool, task_score: str | None,
                   reject: bool) -> None:
    if top < 1:
        raise PackToolError(f"top must be at least 1, got {top}")
    if task_score is not None:
        check_score(task_score)
    if same_task and task != AUTO:
        raise TaskError("same_task needs task 'auto'")
    if reject and (task != AUTO or same_task or task_score not in (None, "mahalanobis")):
        raise TaskError("reject needs task 'auto', one task per image (no same_task) and the "
                        "mahalanobis score")


def _reject(predictions: list[dict[str, Any]], distances: list[np.ndarray], chosen: np.ndarray,
            runners: list[_Runner]) -> None:
    """Give every prediction its ``distance`` and ``reject_ratio``; a ratio above 1 is none of
    the tasks': ``task`` ``None``, no classes."""
    ratios = reject_ratios(distances, chosen, [r.meta.reject_distance for r in runners])
    nearest = np.stack(distances, 1)[np.arange(len(chosen)), chosen].tolist()
    for p, ratio, distance in zip(predictions, ratios.tolist(), nearest):
        p["distance"], p["reject_ratio"] = distance, ratio
        if ratio > 1:
            p.update(task=None, top=[])


def _runners(sess: ort.InferenceSession, task: str | None, score: str | None, source: str
             ) -> tuple[list[_Runner], str | None]:
    """The tasks to run (a per-task file's one; a multi-task file's named one, all for auto)
    and the task score (``score``, or the file's default)."""
    props = sess.get_modelmeta().custom_metadata_map
    if not is_multi_task(props):
        meta = TaskMetadata.from_props(props, source)
        if task == AUTO:
            raise TaskError(f"{source} holds the single task {meta.task!r}; `--task auto` needs "
                            "a multi-task ONNX or a pack file (an archive or a model.pt) with "
                            "the tasks to choose from")
        if task is not None and task != meta.task:
            raise TaskError(f"{source} holds task {meta.task!r}, not {task!r}")
        return [_Runner(meta, sess)], score
    runners = [_Runner(meta, sess, index)
               for index, meta in enumerate(tasks_metadata(props, source), start=1)]
    names = [r.meta.task for r in runners]
    if task == AUTO:
        has_distance = DISTANCE_NAME in [o.name for o in sess.get_outputs()]
        return runners, score or default_score_for(has_distance)
    if task is None:
        raise TaskChoiceError(f"{source} holds tasks {', '.join(names)}: choose one with `task` "
                        "(or `auto`)")
    if task not in names:
        raise TaskError(f"{source} has no task {task!r}; it holds {', '.join(names)}")
    return [runners[names.index(task)]], score


def _outputs(runners: list[_Runner], images: Sequence[str | os.PathLike], source: str,
             say: Say, skipped: list[str] | None = None
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[str | os.PathLike]]:
    """Every runner's logits ``[N, classes]`` and feature distances ``[N]`` (NaN from a graph
    without them) on every image, and the images they are of; each image is read once per
    distinct preprocessing, and the tasks of a file that takes mixed-task batches run in one
    call per batch. With ``skipped`` (a list), unreadable files are left out and added to it."""
    logits: list[list[np.ndarray]] = [[] for _ in runners]
    distances: list[list[np.ndarray]] = [[] for _ in runners]
    kept: list[str | os.PathLike] = []
    for start in range(0, len(images), BATCH_SIZE):
        paths = images[start:start + BATCH_SIZE]
        inputs: dict[Preprocess, list[np.ndarray]] = {}
        for prep in dict.fromkeys(r.meta.preprocess for r in runners):
            # The first reading leaves out what cannot be read; the same files read again.
            inputs[prep], paths = _read(prep, paths, None if inputs else skipped)
        for prep, arrays in inputs.items():
            if not paths:
                break
            group = [k for k, r in enumerate(runners) if r.meta.preprocess == prep]
            for k, (first, distance) in zip(group, _run_group([runners[k] for k in group],
                                                               np.stack(arrays))):
                classes = len(runners[k].meta.classes)
                # A multi-task graph pads every task's logits to the largest class count.
                width = first.shape[1] if first.ndim == 2 else -1
                if not (width == classes or (runners[k].index is not None and width > classes)):
                    raise PackFormatError(
                        f"{source} outputs shape {list(first.shape)} for task "
                        f"{runners[k].meta.task!r}, expected [batch, {classes}]")
                logits[k].append(first[:, :classes])
                distances[k].append(distance)
        kept += paths
        say(f"classified {start + len(images[start:start + BATCH_SIZE])}/{len(images)} images")
    if not kept:
        raise DataError("the image could not be read" if len(images) == 1 else
                        f"none of the {len(images)} images could be read")
    return ([np.concatenate(z) for z in logits], [np.concatenate(d) for d in distances], kept)


def _read(prep: Preprocess, paths: Sequence[str | os.PathLike], skipped: list[str] | None
          ) -> tuple[list[np.ndarray], list[str | os.PathLike]]:
    """``paths`` read as ``prep`` says, and the paths read; with ``skipped`` (a list), a file
    that cannot be read is left out and added to it, else it is an error."""
    arrays, read = [], []
    for path in paths:
        try:
            arrays.append(prep.load_image(path))
        except DataError as exc:
            if skipped is None:
                raise DataError(f"{one_line(exc)} (`skip_bad_images` leaves such files out)"
                                ) from None
            skipped.append(str(path))
            continue
        read.append(path)
    return arrays, read


def _run_group(runners: list[_Runner], inputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each runner's ``(logits, distance)`` on ``inputs`` (distance NaN without one; the
    mahalanobis score refuses it by name): one call for all when they share a session that
    mixes tasks, else one call each."""
    n = len(inputs)
    if len(runners) > 1 and all(r.index is not None and r.session is runners[0].session
                                for r in runners) and mixes_tasks(runners[0].session):
        tasks = [r.index for r in runners for _ in range(n)]
        first, *rest = infer_all(runners[0].session, np.concatenate([inputs] * len(runners)),
                                 tasks)
        return [(first[k * n:(k + 1) * n], rest[0][k * n:(k + 1) * n] if rest else
                 np.full(n, np.nan, np.float32)) for k in range(len(runners))]
    results = []
    for r in runners:
        first, *rest = infer_all(r.session, inputs, r.index)
        results.append((first, rest[0] if rest else np.full(n, np.nan, np.float32)))
    return results


def _predictions(images: Sequence[str | os.PathLike], runners: list[_Runner],
                 logits: list[np.ndarray], choice: list[int], top: int, *,
                 named: bool = False) -> list[dict[str, Any]]:
    """Per image, the top classes of the task at ``runners[choice[i]]`` (and, ``named``, the
    task's name)."""
    predictions = []
    for i, (path, k) in enumerate(zip(images, choice)):
        classes = runners[k].meta.classes
        probs = softmax(logits[k][i:i + 1])[0]
        order = np.argsort(-probs, kind="stable")[:min(top, len(classes))]  # ties: lower first
        entry: dict[str, Any] = {
            "image": str(path),
            "top": [{"class": classes[j], "probability": float(probs[j])} for j in order],
        }
        if named:
            entry["task"] = runners[k].meta.task
        predictions.append(entry)
    return predictions
