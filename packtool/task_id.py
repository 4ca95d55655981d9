"""Telling which task an input comes from: the task scores and the choice, on numpy arrays.

Task-free inference (:mod:`packtool.taskfree`) runs every task on an input; :func:`task_scores`
turns their outputs into one score per task, and :func:`identify` picks the best. Both need
only numpy, so the ONNX runtime (:mod:`packtool.exporters.runtime`) serves ``--task auto``
without torch, with the same numbers as ``packtool eval --task-free``.

Scores (:data:`~packtool.choices.SCORES`), higher meaning "more likely this task", each task's
logits first divided by its temperature ``T``:

* ``entropy``: minus the softmax entropy over ``log C`` (a one-class head scores 0);
* ``max-prob``: the largest softmax probability;
* ``energy``: ``T * logsumexp(z / T)``;
* ``mahalanobis``: minus the feature distance to the task's training features (the task-free
  network's second output; NaN for a task without feature statistics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .choices import SCORES
from .errors import TaskError


def check_score(score: str) -> str:
    """``score`` if it is one of :data:`~packtool.choices.SCORES`; TaskError naming them."""
    if score not in SCORES:
        raise TaskError(f"unknown task score {score!r}; choose one of {', '.join(SCORES)}")
    return score


def default_score_for(feature_stats: bool) -> str:
    """The score used unless told: ``mahalanobis`` where every task has feature statistics (it
    identifies tasks far better, see the README's measurements), else ``entropy``."""
    return "mahalanobis" if feature_stats else "entropy"


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def task_scores(logits: Sequence[np.ndarray], temperatures: Sequence[float],
                score: str = "entropy", distances: Sequence[np.ndarray] | None = None
                ) -> np.ndarray:
    """How likely each input comes from each task: float64 ``[N, T]`` from ``T`` arrays
    ``[N, C_t]`` of logits (``mahalanobis``: from ``distances``, ``T`` arrays ``[N]``).

    Raises:
        TaskError: an unknown score, or ``mahalanobis`` for a task without feature statistics.
    """
    check_score(score)
    if len(logits) != len(temperatures) or not logits:
        raise TaskError(f"{len(logits)} tasks' logits for {len(temperatures)} temperatures")
    if score == "mahalanobis":
        if distances is None or len(distances) != len(logits):
            raise TaskError("the mahalanobis score needs every task's feature distances")
        columns = [np.asarray(d, dtype=np.float64) for d in distances]
        missing = [k for k, d in enumerate(columns, start=1) if np.isnan(d).any()]
        if missing:
            raise TaskError(f"task #{missing[0]} has no feature statistics (added before "
                            "packtool fitted them): use another task score")
        return -np.stack(columns, 1)
    columns = []
    for z, t in zip(logits, temperatures):
        z = np.asarray(z, dtype=np.float64) / t
        if score == "energy":
            columns.append(t * _logsumexp(z))
            continue
        log_p = z - _logsumexp(z)[:, None]
        if score == "max-prob":
            columns.append(np.exp(log_p.max(axis=1)))
        else:  # entropy: -H / log C (a one-class head is always sure: 0)
            entropy = -(np.exp(log_p) * log_p).sum(axis=1)
            columns.append(-entropy / max(math.log(z.shape[1]), 1e-12))
    return np.stack(columns, 1)


@dataclass(frozen=True)
class Identification:
    """The task chosen for each input.

    Attributes:
        task: int64 ``[N]``, position (0-based) of the chosen task in the scores' columns.
        margin: float64 ``[N]``, the chosen task's score minus the runner-up's (NaN with one
            task); an input of a group gets its group's.
        scores: ``[N, T]`` the scores the choice was made on (a group's summed scores on each
            of its inputs).
    """

    task: np.ndarray
    margin: np.ndarray
    scores: np.ndarray


def identify(scores: np.ndarray, groups: np.ndarray | None = None) -> Identification:
    """Pick each input's task: the highest score, summed over its group if ``groups`` is given.

    ``scores`` ``[N, T]`` (:func:`task_scores`); ``groups`` ``[N]`` int group ids ``0..G-1``
    (inputs known to come from one task). Ties go to the earlier task.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != scores.shape[:1]:
            raise ValueError(f"{len(groups)} group ids for {len(scores)} inputs")
        summed = np.zeros((int(groups.max()) + 1, scores.shape[1]))
        np.add.at(summed, groups, scores)
        scores = summed[groups]
    task = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), task]
    if scores.shape[1] == 1:
        margin = np.full(len(scores), math.nan)
    else:
        margin = best - np.sort(scores, axis=1)[:, -2]
    return Identification(task.astype(np.int64), margin, scores)


def reject_ratios(distances: Sequence[np.ndarray], chosen: np.ndarray,
                  thresholds: Sequence[float | None]) -> np.ndarray:
    """Each input's chosen task's feature distance over that task's rejection threshold:
    float64 ``[N]``, above 1 for an input that is none of the tasks' (``--reject``).

    ``distances``: ``T`` arrays ``[N]`` (the task-free network's second output); ``chosen``
    ``[N]``: 0-based task positions (:attr:`Identification.task`); ``thresholds``: per task
    (:func:`packtool.taskfree.fit_reject_distance`).

    Raises:
        TaskError: a task without a threshold (added before packtool fitted them).
    """
    missing = [k for k, t in enumerate(thresholds, start=1) if t is None]
    if missing:
        raise TaskError(f"task #{missing[0]} has no rejection threshold (added before packtool "
                        "fitted them): rejecting unknown inputs needs every task's")
    table = np.stack([np.asarray(d, dtype=np.float64) for d in distances], 1)
    rows = np.arange(len(table))
    return table[rows, chosen] / np.asarray(thresholds, dtype=np.float64)[chosen]


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher for ``positives``: the
    chance that a random positive scores above a random negative, ties counting half
    (the Mann-Whitney statistic). NaN if either side is empty."""
    negatives, positives = np.asarray(negatives, float), np.asarray(positives, float)
    if not len(negatives) or not len(positives):
        return math.nan
    values = np.concatenate([negatives, positives])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # Tied values share their mean rank.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_pos = len(positives)
    above = ranks[len(negatives):].sum() - n_pos * (n_pos + 1) / 2
    return float(above / (n_pos * len(negatives)))
