"""Measuring a model: the one evaluation routine, and what packtool reports with it.

* :func:`evaluate` - accuracy and mean loss of a model on a dataset (eval mode, exact across
  torchrun ranks); model selection, add-task's metrics and ``packtool eval`` all use it;
* :func:`evaluate_tasks` - tasks of a pack on their own test splits (or on another dataset);
* :func:`half_precision_change`, :func:`precision_change` - what serving a pack from a float16
  archive, or a task in reduced precision, costs;

Serving without the task id is measured by :mod:`packtool.identification`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .data import DATASETS, TaskData, chance_accuracy, load_task_data, task_data
from .device import resolve_device
from .distributed import World, batches, sum_counts, sum_floats
from .errors import DataError, TaskError, one_line
from .pack import Pack
from .progress import Say, silent
from .taskfree import collect_logits


@dataclass(frozen=True)
class Measurement:
    """A model on one split: top-1 accuracy (0..1) and mean cross-entropy loss."""

    accuracy: float
    loss: float

    def better_than(self, other: Measurement | None) -> bool:
        """The model-selection rule: higher accuracy; on equal accuracy, lower loss.

        The loss settles ties, which are common: a small validation split saturates (100% after
        a few epochs), and keeping the first epoch that reached it keeps an undertrained model.
        """
        return other is None or (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
             device: str | torch.device = "cpu", workers: int = 0,
             world: World | None = None, loader: DataLoader | None = None) -> Measurement:
    """Accuracy and mean loss of ``model`` in eval mode on ``dataset``; restores the mode.

    With ``world``, each rank evaluates its ``DistributedSampler`` shard and the sums are
    reduced; the sampler's padding samples are not counted, so the result is exact and equal on
    every rank. ``loader`` (made by :func:`eval_loader` over ``dataset``) is used instead of
    a new one: its worker processes persist across evaluations.
    """
    n = len(dataset)
    if n == 0:
        raise DataError("the evaluation split is empty")
    device = torch.device(device)
    if loader is None:
        loader = eval_loader(dataset, batch_size=batch_size, world=world, num_workers=workers)
    was_training = model.training
    model.eval()
    correct = seen = 0
    loss_sum = 0.0
    try:
        for inputs, labels in batches(loader, world, device):
            logits = model(inputs.to(device, non_blocking=True))
            hits = logits.argmax(1).cpu() == labels
            losses = nn.functional.cross_entropy(logits, labels.to(device), reduction="none")
            counted = torch.ones_like(hits)
            if world is not None:  # sample j of this shard is dataset position rank + j * size
                position = world.rank + (seen + torch.arange(len(labels))) * world.size
                counted = position < n
            correct += int((hits & counted).sum())
            loss_sum += float(losses.double().cpu()[counted].sum())
            seen += len(labels)
    finally:
        model.train(was_training)
    (correct,) = sum_counts(world, [correct], device)
    (loss_sum,) = sum_floats(world, [loss_sum], device)
    return Measurement(correct / n, loss_sum / n)


def eval_loader(dataset: Dataset, *, batch_size: int, world: World | None = None,
                **settings: Any) -> DataLoader:
    """The loader :func:`evaluate` reads ``dataset`` with: in order, the rank's shard under
    torchrun; ``settings`` are DataLoader's (:func:`packtool.config.loader_settings`).

    The loader draws its workers' base seed from a generator of its own: evaluating never
    moves the global random stream (a loader whose workers persist draws it once, a loader
    without workers on every pass, so a shared stream would depend on both)."""
    sampler = None
    if world is not None:
        sampler = DistributedSampler(dataset, world.size, world.rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      generator=torch.Generator(), **settings)


def chance_warning(accuracy: float, test: Dataset) -> str | None:
    """Why ``accuracy`` on ``test`` says the model learned little, or ``None``.

    A model that learned nothing scores what always answering the most common class scores
    (:func:`~packtool.data.chance_accuracy`); ``accuracy`` within two binomial standard errors
    of that (95%) is no evidence of more. A task that ends there still froze and owns weights, so
    its user hears it then, not when it is served.
    """
    chance = chance_accuracy(test)
    if chance is None or chance >= 1.0:  # one class only: missing_classes says so
        return None
    margin = 2 * math.sqrt(chance * (1 - chance) / len(test))
    if accuracy > chance + margin:
        return None
    return (f"test accuracy {accuracy:.2%} is no better than always answering the most common "
            f"class ({chance:.2%} of the {len(test)} test images): the task learned little; "
            f"more `epochs`, another `lr`, or a network suited to the images may help")


# ------------------------------------------------------------------------------------------------
# Tasks of a pack
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskEvaluation:
    """One task measured on a test split; :meth:`to_dict` is a row of ``packtool eval --json``."""

    task: str
    index: int
    accuracy: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_tasks(pack: Pack, tasks: Sequence[str] = (), *, data: str | None = None,
                   classes: Sequence[int] | None = None, root: str | os.PathLike | None = None,
                   batch_size: int = 256, device: str | torch.device = "auto",
                   say: Say = silent) -> list[TaskEvaluation]:
    """Top-1 accuracy of ``tasks`` (default: all) on their held-out test splits.

    Each task's data is rebuilt from its record (:meth:`Pack.task_data`; ``root`` overrides
    where it lives), or, with ``data`` (and ``classes``), read from that dataset, whose class
    count must match the task's. ``say`` receives a line of progress per task.
    """
    records = [pack.task(t) for t in tasks] if tasks else pack.tasks
    if not records:
        raise TaskError("the pack has no tasks to evaluate yet; add one first")
    dev = resolve_device(device)
    rows = []
    for record in records:
        test = (_recorded_data(pack, record.name, root) if data is None
                else _other_data(pack, record.name, data, classes, root)).test
        say(f"task {record.name!r}: evaluating on {len(test)} test images")
        accuracy = evaluate(pack.model_for(record.name, dev), test, batch_size=batch_size,
                            device=dev).accuracy
        rows.append(TaskEvaluation(record.name, record.index, accuracy, len(test)))
    return rows


def _recorded_data(pack: Pack, task: str, root: str | os.PathLike | None) -> TaskData:
    """The task's data where it was added from; if it is not there, where to give it now."""
    try:
        return task_data(pack, task, root=root)
    except DataError as exc:
        where = "`root`" if pack.task(task).data.get("data") in DATASETS else "`data`"
        raise DataError(f"{one_line(exc)}; if its images moved, give their place with "
                        f"{where} and `task`") from None


def _other_data(pack: Pack, task: str, data: str, classes: Sequence[int] | None,
                root: str | os.PathLike | None) -> TaskData:
    other = load_task_data(data, pack.preprocess, root=root, classes=classes)
    expected = len(pack.task(task).classes)
    if len(other.classes) != expected:
        raise DataError(
            f"`data` {data} has {len(other.classes)} classes but task {task!r} has "
            f"{expected}; pick matching `classes`"
        )
    return other


# ------------------------------------------------------------------------------------------------
# Half precision
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionChange:
    """One task served in reduced precision (a float16 archive, an int8 or float16 ONNX file)
    against the same task in float32.

    Attributes:
        task: task name.
        accuracy, accuracy_reduced: top-1 accuracy (0..1) on the task's test split, float32
            network and reduced one; ``None`` if the task's data could not be loaded.
        samples: test images measured (0 without data).
        max_abs_diff: largest ``|logit_reduced - logit|`` on those images, or on a seeded random
            batch without data.
    """

    task: str
    accuracy: float | None
    accuracy_reduced: float | None
    samples: int
    max_abs_diff: float

    @property
    def accuracy_change(self) -> float | None:
        """Percentage points of test accuracy gained (negative: lost); ``None`` without data."""
        if self.accuracy is None or self.accuracy_reduced is None:
            return None
        return (self.accuracy_reduced - self.accuracy) * 100

    def to_dict(self) -> dict[str, Any]:
        """An item of ``export --archive --half --json``'s ``half_precision`` list."""
        return {"task": self.task, "accuracy": self.accuracy,
                "accuracy_half": self.accuracy_reduced, "samples": self.samples,
                "max_abs_diff": self.max_abs_diff}


def half_precision_change(pack: Pack, half: Pack, *, data_root: str | os.PathLike | None = None,
                          batch_size: int = 256) -> list[PrecisionChange]:
    """What storing ``pack`` in float16 costs: each task of ``pack`` against ``half``.

    ``half`` is the pack read back from ``write_archive(pack, ..., half=True)``. Each task is
    measured on its own test split (rebuilt with :meth:`Pack.task_data`, ``data_root``
    overriding where the data lives); a task whose data cannot be read gets ``None``
    accuracies and the logit difference on 8 standard-normal inputs (seed 0).
    """
    changes = []
    for record in pack.tasks:
        full = pack.model_for(record.name, device="cpu")
        reduced = half.model_for(record.name, device="cpu")
        try:
            test = task_data(pack, record.name, root=data_root).test
            changes.append(precision_change(record.name, full, reduced, test, batch_size))
        except DataError:
            changes.append(PrecisionChange(record.name, None, None, 0,
                                           noise_difference(full, reduced,
                                                            pack.spec.input_size)))
    return changes


@torch.no_grad()
def noise_difference(full: nn.Module, reduced: nn.Module, input_size: Sequence[int]) -> float:
    """Largest ``|logit_reduced - logit|`` of two networks on 8 standard-normal inputs
    ``[8, *input_size]`` (seed 0): what a reduced precision changes when no test image can be
    read."""
    noise = torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0))
    return float((reduced(noise) - full(noise)).abs().max())


def precision_change(task: str, full: nn.Module, reduced: nn.Module, test: Dataset,
                     batch_size: int = 256) -> PrecisionChange:
    """Task ``task``'s float32 network ``full`` against its reduced-precision twin ``reduced``
    (any module from images to logits, e.g. an onnxruntime session) on the test split, both
    read in one pass (:func:`~packtool.taskfree.collect_logits`)."""
    if len(test) == 0:
        raise DataError(f"task {task!r} has an empty test split")
    (expected, actual), labels = collect_logits([full, reduced], test, batch_size=batch_size)
    return PrecisionChange(task, float((expected.argmax(1) == labels).double().mean()),
                           float((actual.argmax(1) == labels).double().mean()), len(labels),
                           float((actual - expected).abs().max()))
