"""``predict``: classify image files with an exported task, or with the tasks of a pack file.

An ``.onnx`` file brings its classes and preprocessing in its metadata; a multi-task file
(:mod:`.multitask`) brings every task's. A pack file (an archive or a ``model.pt``) has its
task rebuilt, exported to ONNX in memory and run the same way, so all give the same numbers.
With ``task="auto"`` (a multi-task file or a pack file, which is exported as one multi-task
graph in memory) every task runs and each image (or, with ``same_task``, the whole set) goes to
the task that scores it best (:mod:`packtool.taskfree`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from packtool.data import Preprocess
from packtool.errors import PackFormatError, PackToolError, TaskError
from packtool.formats.sniff import is_pack_file, load
from packtool.taskfree import (
    check_score,
    default_score,
    default_score_for,
    identify,
    task_scores,
)

from .multitask import is_multi_task, multi_task_onnx, tasks_metadata
from .onnx import DISTANCE_NAME, TaskMetadata, task_onnx
from .runtime import infer_all, provider_of, session, softmax

BATCH_SIZE = 32  # images per onnxruntime call
AUTO = "auto"  # the task name that asks predict to choose the task


@dataclass
class PredictResult:
    """What :func:`predict` returns; :meth:`to_dict` is ``packtool predict --json``.

    Attributes:
        task: the task that ran; with ``auto``, the group's chosen task under ``same_task``,
            else ``None`` (each prediction names its own).
        provider: the onnxruntime execution provider that ran it.
        predictions: per image in input order, ``{"image": path, "top": [{"class",
            "probability"}, ...]}`` with ``top`` sorted by probability, highest first; with
            ``auto`` also ``"task"`` (the chosen task) and ``"task_margin"`` (its score minus
            the runner-up's; ``None`` with one task).
        task_score: with ``auto``, the score that chose the tasks; else ``None``.
    """

    task: str | None
    provider: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    task_score: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = {"task": self.task, "provider": self.provider, "predictions": self.predictions}
        return doc if self.task_score is None else {**doc, "task_score": self.task_score}


@dataclass
class _Runner:
    """One task ready to run: its metadata, its onnxruntime session and, in a multi-task
    session, its 1-based index (the ``task`` input)."""

    meta: TaskMetadata
    session: ort.InferenceSession
    index: int | None = None


def predict(source: str | os.PathLike, images: Sequence[str | os.PathLike], *,
            task: str | None = None, top: int = 5, same_task: bool = False,
            task_score: str | None = None) -> PredictResult:
    """Classify ``images`` with one task of an exported ``.onnx`` or a pack file, or let
    ``task="auto"`` choose the task.

    A per-task ``.onnx`` file brings its classes and preprocessing in its metadata (``task``,
    if given, must match it). A multi-task ``.onnx`` file and a pack file (archive or
    ``model.pt``) need ``task``; a pack file's task is rebuilt, exported to ONNX in memory and
    run with onnxruntime. Images are prepared as the task's metadata says
    (:meth:`packtool.data.Preprocess.load_image`).

    Args:
        task: the task to run, or ``"auto"`` (a multi-task file or a pack file): every task
            runs and each image goes to the task with the best ``task_score`` after the tasks'
            temperatures.
        top: how many classes to report per image (clamped to the number of classes).
        same_task: with ``auto``, the images come from one task: it is chosen by their summed
            scores.
        task_score: ``entropy``, ``max-prob``, ``energy`` or ``mahalanobis``
            (:mod:`packtool.taskfree`); default: ``mahalanobis`` where every task has feature
            statistics, else ``entropy`` (:func:`packtool.taskfree.default_score`).

    Returns:
        softmax probabilities of the ``top`` most likely classes per image.
    """
    if top < 1:
        raise PackToolError(f"top must be at least 1, got {top}")
    if task_score is not None:
        check_score(task_score)
    if same_task and task != AUTO:
        raise TaskError("same_task needs task 'auto'")
    runners, task_score = _runners(Path(source), task, task_score)
    logits, distances = _outputs(runners, images, str(source))
    if task != AUTO:
        return PredictResult(runners[0].meta.task, provider_of(runners[0].session),
                             _predictions(images, runners, logits, [0] * len(images), top))
    temperatures = [1.0 if r.meta.temperature is None else r.meta.temperature for r in runners]
    scores = task_scores([torch.from_numpy(z) for z in logits], temperatures, task_score,
                         [torch.from_numpy(d) for d in distances])
    chosen = identify(scores, torch.zeros(len(images), dtype=torch.long) if same_task else None)
    choice = chosen.task.tolist()
    predictions = _predictions(images, runners, logits, choice, top, named=True)
    for p, margin in zip(predictions, chosen.margin.tolist()):
        p["task_margin"] = None if math.isnan(margin) else margin
    return PredictResult(runners[choice[0]].meta.task if same_task else None,
                         provider_of(runners[0].session), predictions, task_score)


def _runners(source: Path, task: str | None, score: str | None
             ) -> tuple[list[_Runner], str | None]:
    """The tasks to run: the ``.onnx`` file's one (or a multi-task file's), or a pack file's
    named one (all for auto), and the task score (``score``, or the source's default)."""
    if not source.is_file():
        raise PackToolError(f"{source} does not exist")
    if not is_pack_file(source):
        sess = session(source)
        props = sess.get_modelmeta().custom_metadata_map
        if is_multi_task(props):
            return _chosen(_multi_task_runners(sess, str(source)), task, score, str(source))
        meta = TaskMetadata.from_props(props, str(source))
        if task == AUTO:
            raise TaskError(f"{source} holds the single task {meta.task!r}; `--task auto` needs "
                            "a multi-task ONNX or a pack file (an archive or a model.pt) with "
                            "the tasks to choose from")
        if task is not None and task != meta.task:
            raise TaskError(f"{source} holds task {meta.task!r}, not {task!r}")
        return [_Runner(meta, sess)], score
    pack = load(source)
    if not pack.tasks:
        raise TaskError(f"{source} has no tasks yet; add one with `packtool add-task`")
    if task == AUTO:
        sess = session(multi_task_onnx(pack).SerializeToString())
        return _multi_task_runners(sess, str(source)), score or default_score(pack)
    if task is None:
        raise TaskError(f"{source} holds tasks {', '.join(pack.task_names)}: choose one with "
                        "`task` (or `auto`)")
    proto = task_onnx(pack, pack.task(task).name)
    meta = TaskMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(source))
    return [_Runner(meta, session(proto.SerializeToString()))], score


def _multi_task_runners(sess: ort.InferenceSession, source: str) -> list[_Runner]:
    metas = tasks_metadata(sess.get_modelmeta().custom_metadata_map, source)
    return [_Runner(meta, sess, index) for index, meta in enumerate(metas, start=1)]


def _chosen(runners: list[_Runner], task: str | None, score: str | None, source: str
            ) -> tuple[list[_Runner], str | None]:
    """A multi-task file's runners for ``task`` (all for auto) and the score to use."""
    names = [r.meta.task for r in runners]
    if task == AUTO:
        has_distance = DISTANCE_NAME in [o.name for o in runners[0].session.get_outputs()]
        return runners, score or default_score_for(has_distance)
    if task is None:
        raise TaskError(f"{source} holds tasks {', '.join(names)}: choose one with `task` "
                        "(or `auto`)")
    if task not in names:
        raise TaskError(f"{source} has no task {task!r}; it holds {', '.join(names)}")
    return [runners[names.index(task)]], score


def _outputs(runners: list[_Runner], images: Sequence[str | os.PathLike],
             source: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every runner's logits ``[N, classes]`` and feature distances ``[N]`` (NaN from a graph
    without them) on every image; each image is read once per distinct preprocessing."""
    logits: list[list[np.ndarray]] = [[] for _ in runners]
    distances: list[list[np.ndarray]] = [[] for _ in runners]
    for start in range(0, len(images), BATCH_SIZE):
        paths = images[start:start + BATCH_SIZE]
        inputs: dict[Preprocess, np.ndarray] = {}
        for k, runner in enumerate(runners):
            prep = runner.meta.preprocess
            if prep not in inputs:
                inputs[prep] = torch.stack([prep.load_image(p) for p in paths]).numpy()
            first, *rest = infer_all(runner.session, inputs[prep], runner.index)
            classes = len(runner.meta.classes)
            # A multi-task graph pads every task's logits to the largest class count.
            width = first.shape[1] if first.ndim == 2 else -1
            if not (width == classes or (runner.index is not None and width > classes)):
                raise PackFormatError(
                    f"{source} outputs shape {list(first.shape)} for task "
                    f"{runner.meta.task!r}, expected [batch, {classes}]")
            logits[k].append(first[:, :classes])
            # No distance output: NaN, which the mahalanobis score refuses by name.
            distances[k].append(rest[0] if rest else
                                np.full(len(paths), np.nan, np.float32))
    return [np.concatenate(z) for z in logits], [np.concatenate(d) for d in distances]


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
