"""Measuring task-free serving: which task an image is given, and which images are none of
the tasks'.

* :func:`evaluate_task_free` - every task's test split served without its task id
  (:mod:`packtool.taskfree` scores, :mod:`packtool.task_id` chooses): how often the task is
  identified, the class accuracy without the task id and with it;
* :func:`evaluate_unknown` - images of none of the tasks, rejected at the thresholds fitted on
  validation: AUROC and the shares rejected, unknown and known.

Both read every split through every task's network once (:func:`logits_table`), then score it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .data import task_data
from .device import resolve_device
from .errors import TaskError
from .pack import Pack
from .progress import Say, silent
from .task_id import auroc, check_score, identify, reject_ratios, task_scores
from .taskfree import TaskFreeNet, collect_logits, default_score, task_free_net, temperatures_of

# ------------------------------------------------------------------------------------------------
# Without the task id
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitLogits:
    """One task's test split seen by every task's network: ``logits[k]`` ``[N, C_k]`` and
    ``distances[k]`` ``[N]`` (:class:`TaskFreeNet`)."""

    task: str
    index: int
    logits: list[Tensor]
    distances: list[Tensor]
    labels: Tensor


def logits_table(pack: Pack, *, root: str | os.PathLike | None = None, batch_size: int = 256,
                 device: str | torch.device = "auto", say: Say = silent
                 ) -> list[SplitLogits]:
    """Every task's test split through every task's network (each network built once)."""
    if not pack.tasks:
        raise TaskError("the pack has no tasks to evaluate yet; add one first")
    dev = resolve_device(device)
    nets = [task_free_net(pack, t.name, dev) for t in pack.tasks]
    table = []
    for record in pack.tasks:
        test = task_data(pack, record.name, root=root).test
        say(f"task {record.name!r}: its {len(test)} test images through every task's network")
        table.append(split_logits(nets, test, record.name, record.index,
                                  batch_size=batch_size, device=dev))
    return table


def split_logits(nets: Sequence[TaskFreeNet], dataset: Dataset, task: str, index: int, *,
                 batch_size: int = 256, device: str | torch.device = "cpu") -> SplitLogits:
    """Task ``task``'s split ``dataset`` through every task's network ``nets``."""
    outputs, labels = collect_logits(nets, dataset, batch_size=batch_size, device=device)
    return SplitLogits(task, index, [o[0] for o in outputs], [o[1] for o in outputs], labels)


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
                    group: int = 1, score: str = "entropy", seed: int = 0
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
        scores = task_scores([z.numpy() for z in split.logits], temperatures, score,
                             [d.numpy() for d in split.distances])
        chosen = torch.from_numpy(identify(scores, groups.numpy()).task)
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


def evaluate_task_free(pack: Pack, *, group: int = 1, score: str | None = None,
                       calibrated: bool = True, root: str | os.PathLike | None = None,
                       batch_size: int = 256, device: str | torch.device = "auto",
                       seed: int = 0, say: Say = silent,
                       table: Sequence[SplitLogits] | None = None
                       ) -> list[TaskFreeEvaluation]:
    """Every task's test split served without the task id (see :func:`score_task_free`).

    ``score`` defaults to :func:`default_score`; ``calibrated=False`` ignores the recorded
    temperatures (every task at 1). ``say`` receives a line of progress per task. ``table``:
    the splits' :func:`logits_table`, if already at hand (e.g. for :func:`evaluate_unknown`).
    """
    score = check_score(score or default_score(pack))
    if group < 1:
        raise TaskError(f"group must be at least 1, got {group}")
    if table is None:
        table = logits_table(pack, root=root, batch_size=batch_size, device=device, say=say)
    temperatures = temperatures_of(pack) if calibrated else [1.0] * len(pack.tasks)
    return score_task_free(table, temperatures, group=group, score=score, seed=seed)


def _group_share(right: Tensor, groups: Tensor) -> Tensor:
    """Share of groups whose images are right (a group's images share one choice)."""
    count = int(groups.max()) + 1
    first = torch.full((count,), len(groups), dtype=torch.long).scatter_reduce_(
        0, groups, torch.arange(len(groups)), reduce="amin")
    return right[first].double().mean()


# ------------------------------------------------------------------------------------------------
# Inputs of none of the tasks
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnknownEvaluation:
    """Images of none of the pack's tasks served task-free with rejection (``eval --task-free
    --unknown DATA``): each image goes to the nearest task by feature distance and is rejected
    where that distance passes the task's threshold (:func:`packtool.task_id.reject_ratios`).

    Attributes:
        samples: the unknown images; known_samples: the tasks' test images, all tasks.
        auroc: how well the reject ratio tells unknown from known images (1: always, 0.5:
            chance).
        rejected: share of the unknown images rejected at the recorded thresholds.
        known_rejected: share of the known test images wrongly rejected (the thresholds were
            fitted to reject ``1 - ACCEPT`` of each task's validation images);
            known_rejected_by_task: the same per task, in task order.
    """

    samples: int
    known_samples: int
    auroc: float
    rejected: float
    known_rejected: float
    known_rejected_by_task: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_unknown(pack: Pack, unknown: Dataset, *, table: Sequence[SplitLogits] | None = None,
                     root: str | os.PathLike | None = None, batch_size: int = 256,
                     device: str | torch.device = "auto", say: Say = silent
                     ) -> UnknownEvaluation:
    """Serve ``unknown`` (images of none of the tasks) and every task's test split task-free
    with rejection; ``table``: the known splits' :func:`logits_table`, if already at hand.

    Raises:
        TaskError: a task without feature statistics or a rejection threshold.
    """
    thresholds = reject_thresholds(pack)
    if table is None:
        table = logits_table(pack, root=root, batch_size=batch_size, device=device, say=say)
    dev = resolve_device(device)
    say(f"the {len(unknown)} unknown images through every task's network")
    nets = [task_free_net(pack, t.name, dev) for t in pack.tasks]
    outside = split_logits(nets, unknown, "unknown", 0, batch_size=batch_size, device=dev)
    return score_unknown(table, outside, thresholds)


def reject_thresholds(pack: Pack) -> list[float]:
    """Every task's rejection threshold; TaskError naming a task that has none."""
    missing = [t.name for t in pack.tasks if not t.rejects]
    if missing:
        raise TaskError(f"task {missing[0]!r} has no rejection threshold (added before packtool "
                        "fitted them): rejecting unknown inputs needs every task's")
    return [float(t.feature_stats["reject"]) for t in pack.tasks]


def score_unknown(table: Sequence[SplitLogits], unknown: SplitLogits,
                  thresholds: Sequence[float]) -> UnknownEvaluation:
    """:class:`UnknownEvaluation` from the known splits' and the unknown split's distances."""
    def ratios(split: SplitLogits) -> np.ndarray:
        distances = [d.numpy() for d in split.distances]
        chosen = identify(task_scores([z.numpy() for z in split.logits], [1.0] * len(distances),
                                      "mahalanobis", distances)).task
        return reject_ratios(distances, chosen, thresholds)

    known = [ratios(split) for split in table]
    outside = ratios(unknown)
    every = np.concatenate(known)
    return UnknownEvaluation(
        samples=len(outside), known_samples=len(every), auroc=auroc(every, outside),
        rejected=float((outside > 1).mean()), known_rejected=float((every > 1).mean()),
        known_rejected_by_task={s.task: float((r > 1).mean()) for s, r in zip(table, known)})
