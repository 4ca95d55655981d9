"""Task-free inference: which task an image comes from, and its class, without a task id.

PackNet serves task ``k`` with the weights of tasks ``1..k`` and its own head, and must be told
``k``. Every task of a pack is at hand, so packtool can instead run an image through every
task's network and pick the task whose head is the surest of itself. Heads trained alone are not
equally sure of themselves, so each task's logits are first divided by a temperature fitted on
that task's validation split when the task is added (:func:`calibrate`; temperature scaling,
Guo et al., ICML 2017).

Scores, per image and task (higher: more likely the image's task). ``z`` are the task's logits
``[N, C]``, ``T`` its temperature, ``p = softmax(z / T)``:

* ``entropy`` (the default): ``-H(p) / log C``, the entropy normalized by its maximum and
  negated, so a sure head scores near 0 and a head at chance -1 (normalized so that a 100-class
  head is not judged less sure than a 2-class head for its larger range alone);
* ``max-prob``: ``max p``;
* ``energy``: ``T * logsumexp(z / T)``, the negative free energy (Liu et al., NeurIPS 2020).

A group of images known to come from one task (a camera, a folder: ``same_task``,
``eval --task-free --group N``) is scored by summing its images' scores per task.

Lifecycle: :func:`calibrate` when a task is added (its record keeps the temperature);
:func:`task_scores` -> :func:`identify` to serve (:func:`packtool.exporters.predict` with
``task="auto"``); :func:`evaluate_task_free` to measure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .config import resolve_device
from .data import TaskData
from .errors import DataError, TaskError
from .pack import Pack

SCORES = ("entropy", "max-prob", "energy")
DEFAULT_SCORE = "entropy"
# Temperatures searched by calibrate(): 481 points evenly spaced in log T (steps of 1.25%).
TEMPERATURES = torch.logspace(math.log10(0.05), math.log10(20.0), 481, dtype=torch.float64)
# Spread of the log-normal prior on T (see fit_temperature).
PRIOR_SIGMA = 1.0


def check_score(score: str) -> str:
    """``score`` if it is one of :data:`SCORES`; TaskError naming them otherwise."""
    if score not in SCORES:
        raise TaskError(f"unknown task score {score!r}; choose one of {', '.join(SCORES)}")
    return score


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature ``T`` that best explains ``labels`` by ``softmax(logits / T)``.

    ``logits`` ``[N, C]``, ``labels`` ``[N]``. Minimizes the summed negative log-likelihood
    plus a log-normal prior on ``T`` (``log T ~ N(0, PRIOR_SIGMA^2)``) over the grid
    :data:`TEMPERATURES` (0.05..20). The prior matters only where the likelihood is flat: a
    head that separates its validation split perfectly keeps lowering its likelihood loss as
    ``T`` falls to 0, which would make it the surest of all heads on every input, the opposite
    of comparable confidences. Deterministic; ties go to the smaller ``T``.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise DataError(f"cannot fit a temperature to logits {list(logits.shape)} and labels "
                        f"{list(labels.shape)}")
    z = logits.detach().double().cpu()
    picked = z.gather(1, labels.long().cpu()[:, None])[:, 0]
    losses = torch.stack([(torch.logsumexp(z / t, 1) - picked / t).sum() for t in TEMPERATURES])
    losses += TEMPERATURES.log() ** 2 / (2 * PRIOR_SIGMA**2)
    return float(TEMPERATURES[int(losses.argmin())])


def calibrate(model: nn.Module, data: TaskData, *, batch_size: int = 256,
              device: str | torch.device = "cpu") -> float:
    """The temperature of ``model``'s head, fitted on ``data.val`` (never ``data.test``).

    Raises:
        DataError: the validation split is empty.
    """
    (logits,), labels = collect_logits([model], data.val, batch_size=batch_size, device=device)
    return fit_temperature(logits, labels)


# ------------------------------------------------------------------------------------------------
# Scores and the choice of task
# ------------------------------------------------------------------------------------------------


def task_scores(logits: Sequence[Tensor], temperatures: Sequence[float],
                score: str = DEFAULT_SCORE) -> Tensor:
    """How likely each image comes from each task: ``[N, T]`` from ``T`` tensors ``[N, C_t]``.

    ``temperatures[t]`` divides task ``t``'s logits first (1 for an uncalibrated task).
    """
    check_score(score)
    if len(logits) != len(temperatures) or not logits:
        raise TaskError(f"{len(logits)} tasks' logits for {len(temperatures)} temperatures")
    columns = []
    for z, t in zip(logits, temperatures):
        z = z.double() / t
        if score == "energy":
            columns.append(t * torch.logsumexp(z, 1))
            continue
        log_p = torch.log_softmax(z, 1)
        if score == "max-prob":
            columns.append(log_p.max(1).values.exp())
        else:  # entropy: -H / log C (a one-class head is always sure: 0)
            entropy = -(log_p.exp() * log_p).sum(1)
            columns.append(-entropy / max(math.log(z.shape[1]), 1e-12))
    return torch.stack(columns, 1)


@dataclass(frozen=True)
class Identification:
    """The task chosen for each image.

    Attributes:
        task: ``[N]`` int64, position (0-based) of the chosen task in the scores' columns.
        margin: ``[N]`` float64, the chosen task's score minus the runner-up's (NaN with one
            task); an image of a group gets its group's.
        scores: ``[N, T]`` the scores the choice was made on (a group's summed scores on each
            of its images).
    """

    task: Tensor
    margin: Tensor
    scores: Tensor


def identify(scores: Tensor, groups: Tensor | None = None) -> Identification:
    """Pick each image's task: the highest score, summed over its group if ``groups`` is given.

    ``scores`` ``[N, T]`` (:func:`task_scores`); ``groups`` ``[N]`` int64 group ids ``0..G-1``
    (images known to come from one task). Ties go to the earlier task.
    """
    if groups is not None:
        if groups.shape != scores.shape[:1]:
            raise ValueError(f"{len(groups)} group ids for {len(scores)} images")
        summed = scores.new_zeros(int(groups.max()) + 1, scores.shape[1])
        scores = summed.index_add_(0, groups, scores)[groups]
    best = scores.max(1)
    if scores.shape[1] == 1:
        margin = torch.full_like(best.values, math.nan)
    else:
        margin = best.values - scores.topk(2, dim=1).values[:, 1]
    return Identification(best.indices, margin, scores)


def temperatures_of(pack: Pack) -> list[float]:
    """Every task's temperature in task order; 1 for a task recorded without one."""
    return [1.0 if t.temperature is None else t.temperature for t in pack.tasks]


# ------------------------------------------------------------------------------------------------
# Measuring task-free accuracy
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_logits(models: Sequence[nn.Module], dataset: Dataset, *, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> tuple[list[Tensor], Tensor]:
    """Every model's logits on ``dataset`` (CPU ``[N, C_m]`` each) and its labels ``[N]``.

    Each batch is read once and run through every model (in eval mode; modes are restored).
    """
    if len(dataset) == 0:
        raise DataError("the split is empty")
    device = torch.device(device)
    modes = [m.training for m in models]
    outputs: list[list[Tensor]] = [[] for _ in models]
    labels = []
    try:
        for m in models:
            m.eval()
        for inputs, targets in DataLoader(dataset, batch_size=batch_size):
            inputs = inputs.to(device, non_blocking=True)
            for out, m in zip(outputs, models):
                out.append(m(inputs).float().cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return [torch.cat(o) for o in outputs], torch.cat(labels)


@dataclass(frozen=True)
class SplitLogits:
    """One task's test split seen by every task's network: ``logits[k]`` ``[N, C_k]``."""

    task: str
    index: int
    logits: list[Tensor]
    labels: Tensor


def logits_table(pack: Pack, *, root: str | os.PathLike | None = None, batch_size: int = 256,
                device: str | torch.device = "auto") -> list[SplitLogits]:
    """Every task's test split through every task's network (each network built once)."""
    if not pack.tasks:
        raise TaskError("the pack has no tasks to evaluate yet; add one first")
    dev = resolve_device(device)
    models = [pack.model_for(t.name, dev) for t in pack.tasks]
    table = []
    for record in pack.tasks:
        test = pack.task_data(record.name, root=root).test
        logits, labels = collect_logits(models, test, batch_size=batch_size, device=dev)
        table.append(SplitLogits(record.name, record.index, logits, labels))
    return table


@dataclass(frozen=True)
class TaskFreeEvaluation:
    """One task's test split served without its task id; a row of ``eval --task-free --json``.

    Attributes:
        task, index: the task whose test images were served.
        samples: test images; groups: groups of ``group`` images (the last may be smaller).
        task_accuracy: share of groups (of images with ``group`` 1) given the right task.
        accuracy: class accuracy without the task id (a wrong task counts as wrong).
        oracle_accuracy: class accuracy with the task id given.
    """

    task: str
    index: int
    samples: int
    groups: int
    task_accuracy: float
    accuracy: float
    oracle_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_task_free(table: Sequence[SplitLogits], temperatures: Sequence[float], *,
                    group: int = 1, score: str = DEFAULT_SCORE, seed: int = 0
                    ) -> list[TaskFreeEvaluation]:
    """Task-free accuracy from :func:`logits_table`.

    Each test split is shuffled with ``seed`` and cut into groups of ``group`` images (the last
    one smaller if ``group`` does not divide it); each group gets one task by its summed scores.
    """
    if group < 1:
        raise TaskError(f"group must be at least 1, got {group}")
    rows = []
    for position, split in enumerate(table):
        n = len(split.labels)
        groups = torch.empty(n, dtype=torch.long)
        groups[torch.randperm(n, generator=torch.Generator().manual_seed(seed))] = (
            torch.arange(n) // group)
        chosen = identify(task_scores(split.logits, temperatures, score), groups).task
        # Each task's own prediction, then the chosen task's: heads may differ in width.
        predicted = torch.stack([z.argmax(1) for z in split.logits], 1)
        predicted = predicted.gather(1, chosen[:, None])[:, 0]
        right_task = chosen == position
        rows.append(TaskFreeEvaluation(
            split.task, split.index, n, int(groups.max()) + 1,
            task_accuracy=float(_group_share(right_task, groups)),
            accuracy=float((right_task & (predicted == split.labels)).double().mean()),
            oracle_accuracy=float((split.logits[position].argmax(1) == split.labels)
                                  .double().mean()),
        ))
    return rows


def evaluate_task_free(pack: Pack, *, group: int = 1, score: str = DEFAULT_SCORE,
                       calibrated: bool = True, root: str | os.PathLike | None = None,
                       batch_size: int = 256, device: str | torch.device = "auto",
                       seed: int = 0) -> list[TaskFreeEvaluation]:
    """Every task's test split served without the task id (see :func:`score_task_free`).

    ``calibrated=False`` ignores the recorded temperatures (every task at 1).
    """
    check_score(score)
    if group < 1:
        raise TaskError(f"group must be at least 1, got {group}")
    table = logits_table(pack, root=root, batch_size=batch_size, device=device)
    temperatures = temperatures_of(pack) if calibrated else [1.0] * len(pack.tasks)
    return score_task_free(table, temperatures, group=group, score=score, seed=seed)


def _group_share(right: Tensor, groups: Tensor) -> Tensor:
    """Share of groups whose images are right (a group's images share one choice)."""
    count = int(groups.max()) + 1
    first = torch.full((count,), len(groups), dtype=torch.long).scatter_reduce_(
        0, groups, torch.arange(len(groups)), reduce="amin")
    return right[first].double().mean()
