"""Running a plan (``packtool run``): every task of the sequence, one process, with its results.

:func:`run_plan` creates MODEL if it does not exist (recording the plan's task count, as
``init --tasks``; its folder too, where the results go), checks that the plan continues the
pack MODEL holds, and adds the tasks the pack does not hold yet, in order, each exactly as
``add-task`` would (an interrupted one resumes from its checkpoint, bit-identical). After every
task it evaluates every task so far on its test split: row ``i`` of the accuracy matrix
``R[i][j]`` (task ``j`` after task ``i``). The results, rows of earlier runs included, are
written beside MODEL as ``results.json`` and ``results.csv`` after every task; backward
transfer, ``mean_j (R[T][j] - R[j][j])``, is computed from the measured matrix (PackNet's is
exactly 0, and this checks it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import AUTO
from .data import TaskData, load_task_data
from .device import resolve_device
from .errors import DataError, PackToolError, PlanError
from .evaluation import evaluate_tasks
from .fileio import atomic_write_bytes, file_lock, sha256_file
from .formats import model_file
from .formats.checkpoint import checkpoint_path
from .growth import DEFAULT_MAX_SIZE
from .job import add_task_to_file, new_pack
from .lifecycle import add_task, check_task_data
from .pack import Pack
from .plan import Plan, PlanTask
from .progress import Progress


@dataclass
class SequenceResult:
    """What :func:`run_plan` reports; :meth:`to_dict` is ``packtool run --json``.

    Attributes:
        tasks: each task's ``add-task --json`` document, in order (earlier runs' included).
        matrix: ``matrix[i][j]``, test accuracy of task ``j`` after task ``i`` was added
            (``j <= i``).
        reference: with ``reference``, each task's accuracy trained alone on a fresh copy of the
            starting network with the same budget (``None`` per task otherwise).
        model: the model file's name, once written beside it: ``results.json`` belongs to it.
        model_sha256: the SHA-256 of the model file the rows describe, once written: a later
            run reuses the rows only for that very file.
    """

    tasks: list[dict[str, Any]] = field(default_factory=list)
    matrix: list[list[float | None]] = field(default_factory=list)
    reference: list[float | None] = field(default_factory=list)
    seconds: float = 0.0
    model: str | None = None
    model_sha256: str | None = None

    @property
    def avg_accuracy(self) -> float:
        return sum(self.matrix[-1]) / len(self.matrix[-1]) if self.matrix else float("nan")

    @property
    def backward_transfer(self) -> float:
        """``mean_j (R[T][j] - R[j][j])`` over the tasks before the last (0 with one task)."""
        last = self.matrix[-1] if self.matrix else []
        earlier = [last[j] - self.matrix[j][j] for j in range(len(last) - 1)]
        return sum(earlier) / len(earlier) if earlier else 0.0

    def to_dict(self) -> dict[str, Any]:
        tasks = [dict(t) for t in self.tasks]
        for doc, ref in zip(tasks, self.reference):
            if ref is not None:
                doc["reference_accuracy"] = ref
                doc["packing_cost"] = ref - doc["accuracy"]
        return {"tasks": tasks, "matrix": self.matrix, "avg_accuracy": self.avg_accuracy,
                "backward_transfer": self.backward_transfer, "seconds": self.seconds,
                **({"model": self.model, "model_sha256": self.model_sha256}
                   if self.model is not None else {})}

    def to_csv(self) -> str:
        """The matrix as CSV: a row per task added, a column per task."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        names = [t["task"] for t in self.tasks]
        writer.writerow(["after", *names])
        for name, row in zip(names, self.matrix):
            writer.writerow([name, *row, *[""] * (len(names) - len(row))])
        return out.getvalue()


def results_path(model: str | os.PathLike, suffix: str) -> Path:
    """``results.json`` or ``results.csv`` beside ``model``."""
    return Path(model).with_name(f"results.{suffix}")


def run_plan(plan: Plan, model: str | os.PathLike, *, reference: bool = False,
             progress: Progress | None = None, log: Any = None) -> SequenceResult:
    """Add every task of ``plan`` that ``model`` does not hold yet (see the module docstring).

    ``log``: a :class:`packtool.runlog.RunLog` to record per-epoch scalars in (it forwards
    them to its own progress); ``progress`` otherwise.
    Raises PlanError when the plan contradicts the pack in ``model``, which is then unchanged.
    """
    model = Path(model)
    started = time.perf_counter()
    _check_results_owner(model)
    fresh = not model.exists()
    pack = _starting_pack(plan, len(plan.tasks)) if fresh else model_file.load(model)
    plan.check_against(pack)
    _check_devices(plan.tasks[len(pack.tasks):])
    _check_data(plan.tasks[len(pack.tasks):], pack)
    if fresh:  # after every check: a plan that cannot run leaves no folder behind
        model.parent.mkdir(parents=True, exist_ok=True)
        model_file.save(pack, model)
    elif (pack.planned_tasks or 0) < len(plan.tasks):
        pack = _plan_more_tasks(model, len(plan.tasks))
    result = _earlier_results(model, pack)
    reporter = log if log is not None else (progress or Progress())
    for index, task in enumerate(plan.tasks[len(pack.tasks):], start=len(pack.tasks) + 1):
        if log is not None:
            log.task_start(task.name)
        reporter.message(f"Task {index}/{len(plan.tasks)}: {task.name}, prune "
                         f"{task.options['prune']}")
        done = _add(model, task, reporter)
        assert done is not None  # one process: rank 0
        pack, added = done
        result.tasks.append(added.to_dict())
        result.matrix.append([row.accuracy for row in evaluate_tasks(
            pack, device=task.options.get("device", "auto"))])
        result.reference.append(_reference(plan, task) if reference else None)
        if log is not None:
            log.task_done(pack, added, len(pack.tasks))
        result.seconds = time.perf_counter() - started
        _write(model, result)
    if result.matrix and None in result.matrix[-1]:  # tasks added outside a run: measure now
        result.matrix[-1] = [row.accuracy for row in evaluate_tasks(pack)]
    result.seconds = time.perf_counter() - started
    if result.model is None:  # no task added by this run: nothing written, the file unchanged
        result.model, result.model_sha256 = model.name, sha256_file(model)
    return result


def _add(model: Path, task: PlanTask, progress: Progress | None) -> Any:
    """``add-task`` for ``task``: the same call, its checkpoint resumed if there is one."""
    options = task.options
    auto = options["prune"] == AUTO
    return add_task_to_file(
        model, task.data, options["prune"], settings=task.settings,
        reserve=options.get("reserve"),
        tolerance=options.get("tolerance", 1.0) if auto or options.get("grow") == AUTO else 1.0,
        auto_trials=options.get("auto_trials", 3) if auto else 3, name=task.name,
        classes=task.classes, data_root=options.get("data_root"),
        val_fraction=options.get("val_fraction", 0.1),
        skip_bad_images=options.get("skip_bad_images", False),
        checkpoint_every=60 * options.get("checkpoint_every", 0),
        resume=checkpoint_path(model).exists(), progress=progress,
        grow=options.get("grow"), max_size=options.get("max_size", DEFAULT_MAX_SIZE),
        refit=options.get("refit", False))


def _plan_more_tasks(model: Path, tasks: int) -> Pack:
    """MODEL planned for ``tasks`` tasks: a plan extended past the pack's plan records its
    length, as a new plan does, so that its tasks to come keep room for one another."""
    with file_lock(model):
        pack = model_file.load(model)
        pack.planned_tasks = tasks
        model_file.save(pack, model)
    return pack


def _check_devices(tasks: Sequence[PlanTask]) -> None:
    """Every task still to add has its device here (a plan read on one machine may ask for
    a GPU another lacks), before the first one trains."""
    for task in tasks:
        try:
            resolve_device(task.settings.get("device", "auto"))
        except PackToolError as exc:  # the plan's words (`device=cpu`), as a bad plan's
            raise PlanError(f"plan task {task.name!r}: {exc}") from None


def _check_data(tasks: Sequence[PlanTask], pack: Pack) -> None:
    """Every task still to add finds its data, fit to train (:func:`check_task_data`), before
    the first one trains: a wrong folder in the last task should not wait for the others.
    The images are listed, not read (``skip_bad_images`` reads them when the task runs)."""
    for task in tasks:
        try:
            check_task_data(_task_data(task, pack, skip_bad_images=False))
        except DataError as exc:
            raise DataError(f"plan task {task.name!r}: {exc}") from None


def _task_data(task: PlanTask, pack: Pack, *, skip_bad_images: bool | None = None) -> TaskData:
    """``task``'s data as its add-task reads it (the split seeded with its seed)."""
    options = task.options
    skip = options.get("skip_bad_images", False) if skip_bad_images is None else skip_bad_images
    return load_task_data(task.data, pack.preprocess, root=options.get("data_root"),
                          classes=task.classes, val_fraction=options.get("val_fraction", 0.1),
                          seed=task.settings.get("seed", 0), skip_bad_images=skip)


def _reference(plan: Plan, task: PlanTask) -> float:
    """``task`` trained alone on a fresh copy of the starting network, with the same settings
    and no pruning (the budget of a network of its own)."""
    pack = _starting_pack(plan)
    _, alone = add_task(pack, task.name, _task_data(task, pack), 0.0, settings=task.settings)
    return alone.accuracy


def _starting_pack(plan: Plan, planned_tasks: int | None = None) -> Pack:
    """The plan's network as ``init`` creates it (its weights included), no task yet."""
    network = plan.network
    return new_pack(network["arch"], input_size=network.get("input_size"),
                    kwargs=network.get("kwargs"), weights=network.get("weights"),
                    policy=network.get("policy", "per_task"),
                    free_init=network.get("free_init", "reinit"), planned_tasks=planned_tasks)


def _recorded_results(model: Path) -> dict[str, Any] | None:
    """The ``results.json`` beside ``model`` as a JSON object, or ``None`` (none, unreadable)."""
    try:
        doc = json.loads(results_path(model, "json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _check_results_owner(model: Path) -> None:
    """Refuse, before any work, to run beside another model's ``results.json``: a second
    experiment in the same folder would overwrite the first one's results."""
    owner = (_recorded_results(model) or {}).get("model")
    if owner is not None and owner != model.name:
        raise PlanError(f"{results_path(model, 'json')} holds the results of {owner}, not "
                        f"{model.name}: run each model in a folder of its own, or move that "
                        "file")


def _earlier_results(model: Path, pack: Pack) -> SequenceResult:
    """The rows of the tasks an earlier run added, from its ``results.json`` when it holds
    exactly the pack's tasks and was written for this very model file (files written before
    packtool recorded the file's SHA-256: the tasks' names must match), else measured again
    from the pack's records."""
    doc = _recorded_results(model)
    try:
        if doc is not None and [t["task"] for t in doc["tasks"]] == pack.task_names and (
                doc.get("model_sha256") in (None, sha256_file(model))):
            return SequenceResult(
                tasks=doc["tasks"], matrix=doc["matrix"],
                reference=[t.get("reference_accuracy") for t in doc["tasks"]])
    except (KeyError, TypeError):
        pass
    # Tasks added outside a run: only the diagonal was measured (when each task was added).
    rows: list[list[float | None]] = [[None] * i + [r.metrics["accuracy"]]
                                      for i, r in enumerate(pack.tasks)]
    tasks = [{"task": r.name, "index": r.index, "accuracy": r.metrics["accuracy"]}
             for r in pack.tasks]
    return SequenceResult(tasks=tasks, matrix=rows, reference=[None] * len(tasks))


def _write(model: Path, result: SequenceResult) -> None:
    result.model, result.model_sha256 = model.name, sha256_file(model)
    doc = json.dumps(result.to_dict(), indent=2) + "\n"
    atomic_write_bytes(results_path(model, "json"), doc.encode())
    atomic_write_bytes(results_path(model, "csv"), result.to_csv().encode())
