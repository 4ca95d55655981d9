"""The add-task lifecycle: train free weights -> prune -> fine-tune survivors -> freeze.

:func:`add_task` is the only code that makes a pack with a new task. Read it top to bottom:

1. **prepare** the live network of task ``k``: every weight PackNet-masked, earlier tasks'
   weights active and frozen, a new head and the task's private state
   (:func:`~.training.prepare`); with ``grow``, the network is widened first (:func:`_grow`);
2. **train** the free weights for ``config.epochs``, keeping the best epoch on validation
   (:func:`~.phases.run_phase`, the epochs of :func:`packtool.loop.train_epoch`);
3. **prune**: release ``prune`` of the trained weights per layer, smallest ``|w|`` first, and
   zero them (:func:`~.phases.prune`);
4. **fine-tune** the kept weights for ``config.finetune_epochs`` (:func:`~.phases.run_phase`
   again);
5. **freeze**: a new pack holding the old tasks and this one (:func:`_freeze`), with its
   head's softmax temperature and feature statistics fitted on validation for task-free
   inference (:func:`packtool.taskfree.calibrate`).

Old tasks' biases, norm statistics and heads live in their task records and are never loaded
into the network being trained, so they cannot drift; their weights are restored after every
optimizer step (:class:`packtool.loop.FrozenWeightGuard`). Model selection uses the validation
split; the held-out test split is only measured (before pruning, after pruning, final).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from . import distributed
from .choices import AUTO
from .config import TrainConfig, check_trains, schedule
from .data import TaskData, missing_classes, with_validation_in_training
from .device import resolve_device
from .errors import DataError
from .evaluation import chance_warning, evaluate
from .formats import model_file
from .formats.checkpoint import Checkpoint, refit_checkpoint, resume_point
from .growth import DEFAULT_MAX_SIZE, choose_growth, plan_growth
from .loop import (
    RngState,
    snapshot,
)
from .method import Phase
from .pack import Pack
from .phases import AfterTraining, prune_auto, prune_measured, run_phase
from .planner import (
    FIXED,
    RESERVE,
    Decision,
    Pruning,
    past_plan,
    planned_reserve,
)
from .progress import Progress
from .records import TaskRecord, TaskResult
from .taskfree import calibrate
from .training import Training, prepare


def add_task(pack: Pack, name: str, data: TaskData, prune: float | str,
             config: TrainConfig | None = None, *, settings: dict[str, Any] | None = None,
             reserve: int | None = None, tolerance: float = 1.0,
             auto_trials: int = 3, progress: Progress | None = None,
             checkpoint: str | os.PathLike | None = None, checkpoint_every: float = 0.0,
             resume: bool = False, grow: float | str | None = None,
             max_size: float = DEFAULT_MAX_SIZE, refit: bool = False
             ) -> tuple[Pack, TaskResult]:
    """Add task ``name`` to ``pack``: the PackNet lifecycle (see the module docstring).

    ``config`` defaults to the paper's schedule for a pretrained network, else to learning
    rates that train from scratch (:func:`packtool.config.schedule`, said in ``progress``),
    with ``settings`` (TrainConfig fields) on top. ``prune`` is the share of the task's trained
    weights released, or ``"auto"``: the largest ratio that keeps validation accuracy within
    ``tolerance`` points of the unpruned network's, found with at most ``auto_trials``
    fine-tunings (:mod:`packtool.planner`). ``reserve`` keeps room for that many more tasks of
    the same size in every layer, releasing more where the ratio would keep too much (``None``:
    the rest of ``pack.planned_tasks``, if any). Returns the new pack and what it measured;
    ``pack`` itself is never changed, so an exception or Ctrl-C leaves nothing half-done.

    With ``checkpoint``, the state is saved there (atomically) after every epoch, or after the
    first epoch that ends ``checkpoint_every`` seconds after the last save; with ``resume`` too,
    an add-task interrupted at any point continues from its last completed epoch and ends as an
    uninterrupted one would (bit-identical on CPU). A checkpoint found without ``resume`` is an
    error, never silently used or overwritten; it is left in place on success.

    ``grow`` first widens the network (:mod:`packtool.growth`) by that fraction, or ``"auto"``
    as far as it gains over ``tolerance`` validation points, to at most ``max_size`` times its
    original prunable weights; earlier tasks run exactly as before. ``refit`` then trains the
    task again on training and validation images with the choices made on validation.
    """
    config, note = (config, None) if config is not None else schedule(pack.pretrained, settings)
    pruning = Pruning(prune, planned_reserve(pack.planned_tasks, len(pack.tasks))
                      if reserve is None else reserve, tolerance, auto_trials)
    _check_new_task(pack, name, data, config, grow)
    world = distributed.current()
    device = distributed.rank_device(world, resolve_device(config.device))
    main = world is None or world.is_main
    progress = (progress if main else None) or Progress()
    for line in filter(None, (note, past_plan(pack.planned_tasks, len(pack.tasks), reserve))):
        progress.message(line)
    started = time.perf_counter()
    task = len(pack.tasks) + 1
    identity = {"task": name, "index": task, **pruning.identity(), "data": data.spec,
                "config": asdict(config),
                "pack": model_file.pack_digest(pack) if checkpoint else None,
                **({"grow": grow, "max_size": max_size} if grow else {})}
    start = resume_point(checkpoint, resume, identity, progress.message)
    # Before the task's network is made: it trains at the new widths.
    pack, grown = (_grow(pack, name, data, config, grow, max_size, tolerance, pruning.reserve,
                         progress, start.grown if start else None)
                   if grow else (pack, None))
    run = _Run(task, name, data, config, device, world, progress,
               checkpoint if main else None, checkpoint_every, grown)  # one writer
    new, decision, metrics = _train_and_freeze(run, pack, pruning, identity, start)
    if refit:  # the choices made on validation, then trained on training + validation
        new, metrics = _refit(run, pack, decision, metrics, pruning.reserve, identity, resume)
    new.tasks[-1].grow_search = grown["search"] if grown else []
    warning = _measure_frozen(run, new, metrics)
    return new, _result(new, decision, metrics, time.perf_counter() - started, data, warning)


@dataclass
class _Run:
    """What one add-task's passes share (its refit trains on other data and epochs)."""

    task: int
    name: str
    data: TaskData
    config: TrainConfig
    device: torch.device
    world: Any
    progress: Progress
    checkpoint: str | os.PathLike | None
    checkpoint_every: float
    grown: dict[str, Any] | None = None  # grow="auto"'s decision, kept in its checkpoints


def _train_and_freeze(run: _Run, pack: Pack, pruning: Pruning, identity: dict[str, Any],
                      start: Checkpoint | None, keep_last: bool = False
                      ) -> tuple[Pack, Decision, dict[str, float]]:
    """Steps 1-5 on ``pack`` (see the module docstring); ``keep_last``: every phase keeps its
    last epoch, not its best on validation."""
    with torch.random.fork_rng(devices=[run.device.index or 0]
                               if run.device.type == "cuda" else []):
        torch.manual_seed(run.config.seed)
        t = prepare(pack, run.task, run.data, run.config, run.device, run.world, run.progress)
        t.checkpoint, t.identity, t.grown = run.checkpoint, identity, run.grown
        t.checkpoint_every, t.keep_last = run.checkpoint_every, keep_last
        decision, metrics = _train_prune_finetune(t, pruning, start)
        return _freeze(t, run.name, decision, metrics), decision, metrics


def _refit(run: _Run, pack: Pack, decision: Decision, metrics: dict[str, float], reserve: int,
           identity: dict[str, Any], resume: bool) -> tuple[Pack, dict[str, float]]:
    """The task trained again from the start on training + validation images, with the ratio
    and the epoch counts (the epochs kept) the first pass chose on validation; each phase
    keeps its last epoch. Checkpointed beside the first pass's checkpoint."""
    epochs = (int(metrics.get("best_epoch_train", run.config.epochs)),
              int(metrics.get("best_epoch_finetune", run.config.finetune_epochs)))
    config = replace(run.config, epochs=epochs[0], finetune_epochs=epochs[1])
    run.progress.message(f"refit: training again on training + validation images, prune "
                         f"{decision.ratio:g}, {epochs[0]} + {epochs[1]} epochs")
    again = replace(run, data=with_validation_in_training(run.data), config=config,
                    checkpoint=refit_checkpoint(run.checkpoint) if run.checkpoint else None)
    identity = {**identity, "refit": {"prune": decision.ratio, "epochs": list(epochs)}}
    found = again.checkpoint is not None and os.path.exists(again.checkpoint)
    start = resume_point(again.checkpoint, resume and found, identity, run.progress.message)
    fixed = Pruning(decision.ratio, reserve)
    new, _, refitted = _train_and_freeze(again, pack, fixed, identity, start, keep_last=True)
    record = new.tasks[-1]  # the first pass's choice, and how it was made
    record.prune_reason = decision.reason
    record.prune_search = [c.to_dict() for c in decision.search or []]
    record.hparams = {**record.hparams, "refit": True}
    return new, {**refitted, "val_accuracy": metrics["val_accuracy"],
                 "refit_val_accuracy": refitted["val_accuracy"]}


def _grow(pack: Pack, name: str, data: TaskData, config: TrainConfig, grow: float | str,
          max_size: float, tolerance: float, reserve: int, progress: Progress,
          decided: dict[str, Any] | None = None) -> tuple[Pack, dict[str, Any] | None]:
    """``pack`` grown by ``grow``, or as ``"auto"`` chooses (:func:`~.growth.choose_growth`:
    trials that train the task and keep the share of the free weights its ``reserve`` leaves
    it, without fine-tuning), and for ``"auto"`` its decision, ``{"grow": fraction (0: none),
    "search": the trials}``. Kept at the reserve, a trial sees the room the task will have,
    not the whole free network (measured on the long permuted sequence: the growth
    benchmark). ``decided``: the decision a resumed checkpoint holds, taken without the trials
    (they are deterministic: the same decision); a run killed during its trials repeats them.
    """
    if grow == AUTO and pack.pretrained and not pack.tasks:  # as a plan's defaults may say
        progress.message("grow auto: a pretrained network's first task trains it as it is")
        return pack, {"grow": 0.0, "search": []}
    if grow == AUTO:
        if decided is not None:
            grow, search = decided["grow"], list(decided["search"])
            progress.message(f"grow auto: the decision of the interrupted run, "
                             f"{f'grow by {grow:g}' if grow else 'no growth'} after "
                             f"{len(search)} trials (not repeated)")
        else:
            grow, search = _growth_trials(pack, name, data, config, max_size, tolerance,
                                          reserve, progress)
        decision = {"grow": float(grow or 0.0), "search": search}
        if not grow:
            pack.check_new_task(name)  # no growth: the network must have room as it is
            return pack, decision
        return _grown(pack, config, float(grow), max_size, progress), decision
    assert isinstance(grow, float)
    return _grown(pack, config, grow, max_size, progress), None


def _growth_trials(pack: Pack, name: str, data: TaskData, config: TrainConfig,
                   max_size: float, tolerance: float, reserve: int, progress: Progress
                   ) -> tuple[float, list[dict[str, float | None]]]:
    """:func:`~.growth.choose_growth` with trials that train the task at a growth (no
    fine-tuning) and score it on validation."""
    def trial(fraction: float) -> float | None:
        if not fraction and pack.free_weights == 0:
            return None  # no room at all without growing
        progress.message(f"grow auto: training the task on the network "
                         f"{f'grown by {fraction:g}' if fraction else 'as it is'}")
        quick = replace(config, finetune_epochs=0) if config.epochs else config
        _, tried = add_task(pack, name, data, 0.0, quick, reserve=reserve, progress=progress,
                            grow=fraction or None, max_size=max_size)
        return tried.val_accuracy

    # A first task with tasks to come tries the whole room at once: all of them run on what
    # it grows, and growing by steps later gains less (measured: the growth benchmark).
    return choose_growth(pack.growth(), pack.widths, pack.shapes, trial, tolerance, max_size,
                         progress.message, at_once=not pack.tasks and reserve > 0)


def _grown(pack: Pack, config: TrainConfig, grow: float, max_size: float, progress: Progress
           ) -> Pack:
    """``pack`` with every growable width widened by ``grow`` of its original units."""
    units, size = plan_growth(pack.growth(), pack.widths, pack.shapes, grow, max_size)
    progress.message(f"growing {len(units)} widths by {grow:g} of their original units: "
                     f"the network is now {size:.2f}x its original size")
    return pack.grown(units, seed=config.seed + len(pack.tasks) + 1)


def _measure_frozen(run: _Run, new: Pack, metrics: dict[str, float]) -> str | None:
    """Check every rank froze the same, calibrate the frozen task (the last of ``new``) and
    record its test accuracy; returns (and says) why that accuracy is at chance, if it is."""
    run.progress.message("frozen: calibrating on validation images, measuring on test images")
    data, device, world = run.data, run.device, run.world
    distributed.check_same_everywhere(
        world, {**new.shared, **{f"owners/{k}": v for k, v in new.owners.items()}}, device)
    record, task = new.tasks[-1], len(new.tasks)
    # Every rank fits the same on the whole validation split (never on test).
    record.temperature, record.feature_stats = calibrate(new, task, data, device=device)
    record.check()
    # Without fine-tuning, the frozen network is the pruned one, measured already.
    record.metrics["accuracy"] = evaluate(
        new.model_for(task, device), data.test, device=device, world=world
    ).accuracy if run.config.finetune_epochs else metrics["accuracy_after_prune"]
    warning = chance_warning(record.metrics["accuracy"], data.test)
    if warning:
        run.progress.message(f"warning: {warning}")
    return warning


def _result(new: Pack, decision: Decision, metrics: dict[str, float], seconds: float,
            data: TaskData, accuracy_warning: str | None) -> TaskResult:
    """What :func:`add_task` reports about the task it froze, the last of ``new``."""
    record = new.tasks[-1]
    return TaskResult(
        task=record.name, index=record.index, accuracy=record.metrics["accuracy"],
        accuracy_before_prune=metrics["accuracy_before_prune"],
        accuracy_after_prune=metrics["accuracy_after_prune"],
        val_accuracy=metrics["val_accuracy"],
        weights_owned=sum(c.owned[record.index - 1] for c in new.capacity()),
        free_fraction=new.free_fraction, seconds=seconds, prune=decision.ratio,
        prune_reason=decision.reason,
        prune_search=None if decision.search is None else [c.to_dict() for c in decision.search],
        prune_warning=decision.warning, accuracy_warning=accuracy_warning,
        skipped_images=int(metrics.get("skipped_images", 0)),
        skipped_files=list(getattr(data, "skipped", None) or []),
        temperature=record.temperature,
        widths=dict(record.widths) or None, grow_search=list(record.grow_search) or None,
        missing_classes=missing_classes(data) or None,
    )


def _check_new_task(pack: Pack, name: str, data: TaskData, config: TrainConfig,
                    grow: float | str | None) -> None:
    """Everything add_task can refuse before it trains: the name, the room (a full network
    has room once it grew), whether the task would train at all, and the data."""
    pack.check_new_task(name, room=not grow)
    check_trains(config.epochs, config.finetune_epochs,
                 pretrained_head=pack.pretrained and not pack.tasks)
    check_task_data(data)


def check_task_data(data: TaskData) -> None:
    """What a task's data must have before it trains: two classes, non-empty splits, and
    two validation images at least.

    Raises:
        DataError: the first of these it lacks.
    """
    if len(data.classes) < 2:
        raise DataError(f"a task needs at least two classes to tell apart; the data has "
                        f"{len(data.classes)}{f' ({data.classes[0]})' if data.classes else ''}")
    if len(data.train) == 0 or len(data.test) == 0 or len(data.val) == 0:
        raise DataError("the dataset needs non-empty train, validation and test splits")
    if len(data.val) < 2:  # calibrate() fits a spread: one image has none
        raise DataError("the validation split has 1 image; calibrating the task for task-free "
                        "inference needs at least 2 (more training images, or a larger "
                        "`val_fraction`)")


# ------------------------------------------------------------------------------------------------
# 2-4. Train, prune, fine-tune
# ------------------------------------------------------------------------------------------------


def _train_prune_finetune(t: Training, pruning: Pruning, start: Checkpoint | None
                          ) -> tuple[Decision, dict[str, float]]:
    """Train, then prune at the given ratio or the planner's, and fine-tune; the metrics
    include the image files the data left out (``skipped_images``)."""
    if getattr(t.data, "skipped", None):
        t.metrics["skipped_images"] = len(t.data.skipped)
    config, search = t.config, start.search if start is not None else None
    after = None  # resuming a fixed ratio's fine-tuning: its checkpoint holds all it needs
    if start is None or start.phase == Phase.TRAIN.value:
        reference, _ = run_phase(t, Phase.TRAIN, config.epochs, config.lr,
                                 config.lr_decay_epochs, start)
        start = None
        after = AfterTraining(snapshot(t.net), RngState.capture(t.generator, t.device),
                               reference)
    elif search is not None:  # resuming inside a search (trained already: its kept epoch)
        if "best_epoch_train" in start.metrics:
            t.metrics["best_epoch_train"] = start.metrics["best_epoch_train"]
        after = AfterTraining(search["start"], RngState.from_dict(search["rng"]),
                               search["reference"])
    if pruning.auto:
        assert after is not None
        return prune_auto(t, pruning, after, start)
    ratio = float(pruning.ratio)
    if start is None:
        assert after is not None
        prune_measured(t, ratio, pruning.reserve)
        after.rng.restore(t.generator, t.device)  # fine-tuning starts as an auto trial does
    else:
        t.metrics.update(start.metrics)
        t.released = start.released
    best_val, _ = run_phase(t, Phase.FINETUNE, config.finetune_epochs, config.finetune_lr, 0,
                            start)
    reason = RESERVE if t.metrics.get("reserve_raised_layers") else FIXED
    return Decision(ratio, reason, None, None), {**t.metrics, "val_accuracy": best_val}


# ------------------------------------------------------------------------------------------------
# 5. Freeze
# ------------------------------------------------------------------------------------------------


def _freeze(t: Training, name: str, decision: Decision, metrics: dict[str, float]) -> Pack:
    """A new pack holding the old tasks and this one; ``t.pack`` is not changed."""
    pack, anat, store = t.pack, t.anatomy, t.pack.device
    state = t.net.state_dict()
    shared = {k: state[f"{k}_orig"].detach().to(store).clone() for k in anat.prunable}
    owners = {k: state[f"{k}_owners"].to(store).clone() for k in anat.prunable}
    _check_frozen_unchanged(pack, shared)
    head_prefix = anat.classifier + "."
    head = {k[len(head_prefix):]: v.detach().to(store).clone()
            for k, v in state.items() if k.startswith(head_prefix)}
    private = {} if t.private_frozen else {
        k: state[k].detach().to(store).clone() for k in anat.private
    }
    record = TaskRecord(
        name=name, index=t.task, classes=list(t.data.classes), data=t.data.spec,
        prune=decision.ratio, prune_reason=decision.reason,
        prune_search=[c.to_dict() for c in decision.search or []],
        hparams=asdict(t.config), metrics=dict(metrics),
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(), head=head,
        private=private, widths=dict(pack.widths),
    )
    released = None if t.released is None else {
        k: v.to(store).clone() for k, v in t.released.items()}
    return pack.with_task(record, shared, owners, released)


def _check_frozen_unchanged(pack: Pack, shared: dict[str, Tensor]) -> None:
    """Refuse to commit if any weight of an earlier task moved (a guard failure is a bug)."""
    for key, old in pack.shared.items():
        owned = pack.owners[key] != 0
        if not torch.equal(old[owned], shared[key][owned]):
            raise RuntimeError(f"internal error: frozen weights of {key} changed during training")
