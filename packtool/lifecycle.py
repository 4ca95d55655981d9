"""The add-task lifecycle: train free weights -> prune -> fine-tune survivors -> freeze.

:func:`add_task` is the only code that makes a pack with a new task. Read it top to bottom:

1. **prepare** the live network of task ``k``: every weight PackNet-masked, earlier tasks'
   weights active and frozen, a new head and the task's private state (:func:`_prepare`);
2. **train** the free weights for ``config.epochs``, keeping the best epoch on validation
   (:func:`_phase`, the epochs of :func:`packtool.loop.train_epoch`);
3. **prune**: release ``prune`` of the trained weights per layer, smallest ``|w|`` first, and
   zero them (:func:`_prune`);
4. **fine-tune** the kept weights for ``config.finetune_epochs`` (:func:`_phase` again);
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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from . import distributed
from .config import TrainConfig, resolve_device, schedule
from .data import TaskData
from .errors import CapacityError, DataError, TaskError
from .evaluation import Measurement, evaluate
from .formats import model_file
from .formats.checkpoint import Checkpoint, resume_point
from .growth import DEFAULT_MAX_SIZE, plan_growth
from .loop import (
    BestEpoch,
    FrozenWeightGuard,
    RngState,
    make_optimizer,
    make_scheduler,
    snapshot,
    train_epoch,
)
from .method import MAX_TASKS, Phase, assign_owners, select_all, with_masks
from .pack import Pack
from .planner import (
    FIXED,
    RESERVE,
    Decision,
    Pruning,
    candidates,
    noise_warning,
    plan,
    planned_reserve,
    target,
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
             resume: bool = False, grow: float | None = None,
             max_size: float = DEFAULT_MAX_SIZE) -> tuple[Pack, TaskResult]:
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

    ``grow`` widens every growable width (:mod:`packtool.growth`) by that fraction of its
    original units before the task trains; earlier tasks run exactly as before. The prunable
    weights may not exceed ``max_size`` times their original number.
    """
    config, note = (config, None) if config is not None else schedule(pack.pretrained, settings)
    pruning = Pruning(prune, planned_reserve(pack.planned_tasks, len(pack.tasks))
                      if reserve is None else reserve, tolerance, auto_trials)
    _check_new_task(pack, name, data)
    world = distributed.current()
    device = distributed.rank_device(world, resolve_device(config.device))
    main = world is None or world.is_main
    progress = (progress if main else None) or Progress()
    if note:
        progress.message(note)
    started = time.perf_counter()
    task = len(pack.tasks) + 1
    identity = {"task": name, "index": task, **pruning.identity(), "data": data.spec,
                "config": asdict(config),
                "pack": model_file.pack_digest(pack) if checkpoint else None,
                **({"grow": grow, "max_size": max_size} if grow else {})}
    if grow:  # before the task's network is made: it trains at the new widths
        pack = _grow(pack, grow, max_size, config.seed + task, progress)
    start = resume_point(checkpoint, resume, identity, progress.message)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        t = prepare(pack, task, data, config, device, world, progress)
        t.checkpoint, t.identity = (checkpoint if main else None), identity  # one writer
        t.checkpoint_every = checkpoint_every
        decision, metrics = _train_prune_finetune(t, pruning, start)
        if getattr(data, "skipped", None):
            metrics["skipped_images"] = len(data.skipped)
        new = _freeze(t, name, decision, metrics)
    _measure_frozen(new, data, metrics, bool(config.finetune_epochs), device, world)
    return new, _result(new, decision, metrics, time.perf_counter() - started)


def _grow(pack: Pack, fraction: float, max_size: float, seed: int, progress: Progress) -> Pack:
    units, size = plan_growth(pack.growth(), pack.widths, pack.shapes, fraction, max_size)
    progress.message(f"growing {len(units)} widths by {fraction:g} of their original units: "
                     f"the network is now {size:.2f}x its original size")
    return pack.grown(units, seed=seed)


def _measure_frozen(new: Pack, data: TaskData, metrics: dict[str, float], finetuned: bool,
                    device: torch.device, world: Any) -> None:
    """Check every rank froze the same, calibrate the frozen task (the last of ``new``) and
    record its test accuracy."""
    distributed.check_same_everywhere(
        world, {**new.shared, **{f"owners/{k}": v for k, v in new.owners.items()}}, device)
    record, task = new.tasks[-1], len(new.tasks)
    # Every rank fits the same on the whole validation split (never on test).
    record.temperature, record.feature_stats = calibrate(new, task, data, device=device)
    record.check()
    # Without fine-tuning, the frozen network is the pruned one, measured already.
    record.metrics["accuracy"] = evaluate(
        new.model_for(task, device), data.test, device=device, world=world
    ).accuracy if finetuned else metrics["accuracy_after_prune"]


def _result(new: Pack, decision: Decision, metrics: dict[str, float],
            seconds: float) -> TaskResult:
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
        prune_warning=decision.warning,
        skipped_images=int(metrics.get("skipped_images", 0)), temperature=record.temperature,
        widths=dict(record.widths) or None,
    )


def _check_new_task(pack: Pack, name: str, data: TaskData) -> None:
    if not name or not name.strip():
        raise TaskError("task name must not be empty")
    if name in pack.task_names:
        raise TaskError(f"task {name!r} already exists; pick another `name`")
    if len(pack.tasks) >= MAX_TASKS:
        raise CapacityError(f"a pack holds at most {MAX_TASKS} tasks")
    if pack.free_weights == 0:
        raise CapacityError(
            "no free weights are left for another task: every weight is owned "
            f"by one of {len(pack.tasks)} tasks (prune earlier tasks harder next time)"
        )
    if not data.classes:
        raise DataError("the dataset has no classes")
    if len(data.train) == 0 or len(data.test) == 0 or len(data.val) == 0:
        raise DataError("the dataset needs non-empty train, validation and test splits")


# ------------------------------------------------------------------------------------------------
# 2-4. Train, prune, fine-tune
# ------------------------------------------------------------------------------------------------


def _train_prune_finetune(t: Training, pruning: Pruning, start: Checkpoint | None
                          ) -> tuple[Decision, dict[str, float]]:
    """Train, then prune at the given ratio or the planner's, and fine-tune."""
    config, search = t.config, start.search if start is not None else None
    after = None  # resuming a fixed ratio's fine-tuning: its checkpoint holds all it needs
    if start is None or start.phase == Phase.TRAIN.value:
        reference, _ = _phase(t, Phase.TRAIN, config.epochs, config.lr,
                              config.lr_decay_epochs, start)
        start = None
        after = _AfterTraining(snapshot(t.net), RngState.capture(t.generator, t.device),
                               reference)
    elif search is not None:  # resuming inside a search
        after = _AfterTraining(search["start"], RngState.from_dict(search["rng"]),
                               search["reference"])
    if pruning.auto:
        assert after is not None
        return _auto(t, pruning, after, start)
    ratio = float(pruning.ratio)
    if start is None:
        assert after is not None
        _prune_measured(t, ratio, pruning.reserve)
        after.rng.restore(t.generator, t.device)  # fine-tuning starts as an auto trial does
    else:
        t.metrics.update(start.metrics)
        t.released = start.released
    best_val, _ = _phase(t, Phase.FINETUNE, config.finetune_epochs, config.finetune_lr, 0, start,
                      include_start=True)
    reason = RESERVE if t.metrics.get("reserve_raised_layers") else FIXED
    return Decision(ratio, reason, None, None), {**t.metrics, "val_accuracy": best_val}


@dataclass
class _AfterTraining:
    """The network and random state right after training (where every pruning starts), and
    its validation accuracy (the reference the planner's tolerance counts from)."""

    state: dict[str, Tensor]
    rng: RngState
    reference: float


def _auto(t: Training, pruning: Pruning, after: _AfterTraining, start: Checkpoint | None
          ) -> tuple[Decision, dict[str, float]]:
    """The planner's choice (:mod:`packtool.planner`), on the validation split only; the
    test split is read after it decided. Checkpoints carry the search, so it resumes.

    A trial stops as soon as its validation accuracy meets the target (whether it passes is
    then known) and is kept paused; the chosen one then finishes its fine-tuning from there,
    which makes it exactly the fixed-ratio fine-tuning at that ratio.
    """
    resumed = (start.search if start is not None else None) or {}
    done = {r: v for r, v in resumed.get("done", [])}
    goal = target(after.reference, pruning.tolerance)
    t.search = {"reference": after.reference, "start": after.state, "rng": after.rng.to_dict(),
                "done": [list(d) for d in resumed.get("done", [])], "current": None,
                "best": resumed.get("best"), "best_ratio": resumed.get("best_ratio"),
                "continuing": False}

    def scan(ratio: float) -> float:
        t.load(after.state, Phase.TRAIN)
        _prune(t, ratio, pruning.reserve)
        select_all(t.net, t.task, Phase.FINETUNE)
        return t.evaluate(t.data.val).accuracy

    def finetune(ratio: float) -> tuple[float, Any]:
        if ratio in done:  # a trial of the run this one resumes
            return done[ratio], t.search["best"] if ratio == t.search["best_ratio"] else None
        here = start if start is not None and resumed.get("current") == ratio else None
        if here is None:
            t.load(after.state, Phase.TRAIN)
            _prune(t, ratio, pruning.reserve)
            after.rng.restore(t.generator, t.device)
        t.search["current"] = ratio
        val, end = _phase(t, Phase.FINETUNE, t.config.finetune_epochs, t.config.finetune_lr, 0,
                          here, include_start=True, stop_at=goal)
        # Plain values: it may travel inside a checkpoint file (no fine-tuning: a state_dict).
        state = snapshot(t.net) if end is None else end.state()
        passed_before = any(v >= goal for _, v in t.search["done"])
        t.search["done"].append([ratio, val])
        t.search["current"] = None
        if val >= goal or not passed_before:  # the winner so far, or the fallback to come
            t.search["best"], t.search["best_ratio"] = state, ratio
        _report_trial(t, ratio, val, goal, t.config.finetune_epochs if end is None else end.epoch)
        return val, state

    warning = noise_warning(len(t.data.val), after.reference, pruning.tolerance)
    if warning:
        t.progress.message(f"warning: {warning}")
    decision = plan(candidates(pruning.minimum), after.reference, pruning.tolerance,
                    pruning.trials, scan, finetune)
    decision.warning = warning
    t.load(after.state, Phase.TRAIN)
    _prune_measured(t, decision.ratio, pruning.reserve)
    winner = next(c for c in decision.search if c.ratio == decision.ratio)
    finished = _finish_trial(t, decision.state, start if resumed.get("continuing") else None)
    winner.val_finetuned = winner.val_finetuned if finished is None else finished
    t.search = None
    return decision, {**t.metrics, "val_accuracy": winner.val_finetuned}


def _report_trial(t: Training, ratio: float, val: float, goal: float, epochs: int) -> None:
    t.progress.message(f"prune {ratio:g}: validation accuracy {val:.2%} after {epochs} of "
                       f"{t.config.finetune_epochs} fine-tuning epochs "
                       f"(target {max(goal, 0.0):.2%})")


def _finish_trial(t: Training, kept: dict[str, Any], start: Checkpoint | None) -> float | None:
    """The chosen trial's fine-tuning, finished from where it paused (or from ``start``, a
    checkpoint written while it finished); returns its best validation accuracy (``None``: the
    trial had finished, its score stands)."""
    if "format" not in kept:  # a finished trial's state_dict (no fine-tuning epochs, or a
        t.load(kept, Phase.FINETUNE)  # checkpoint written before trials paused)
        return None
    paused = Checkpoint.from_state(kept)
    t.search["continuing"] = True  # checkpoints from here on resume the finishing
    val, _ = _phase(t, Phase.FINETUNE, t.config.finetune_epochs, t.config.finetune_lr, 0,
                    start or paused)
    return val


def _phase(t: Training, phase: Phase, epochs: int, lr: float, decay_every: int,
           start: Checkpoint | None = None, include_start: bool = False,
           stop_at: float | None = None) -> tuple[float, Checkpoint | None]:
    """``epochs`` of ``phase``; the best on validation is kept. Returns its accuracy and, with
    ``stop_at``, where the phase ended, as a checkpoint held in memory.

    With ``stop_at`` the phase stops early, paused, once its best validation accuracy reaches
    ``stop_at``; ``_phase`` from that checkpoint finishes it exactly as if it had not stopped.
    """
    if start is not None:  # a checkpoint stores no masks: select_all derives them
        t.net.load_state_dict(with_masks(start.net, t.net))
    select_all(t.net, t.task, phase)  # (see _load)
    if epochs == 0:
        return t.evaluate(t.data.val).accuracy, None
    guard = FrozenWeightGuard(list(t.packed.values()), t.task, phase)
    optimizer = make_optimizer(guard.trainable_weights() + t.head_and_private(), t.config, lr)
    scheduler = make_scheduler(optimizer, decay_every)
    best, epoch = BestEpoch(), 0
    if start is not None:
        best = BestEpoch(Measurement(start.best_val, start.best_val_loss),
                         None if start.best_state is None else with_masks(start.best_state, t.net))
        epoch = start.epoch
        t.restore(start, optimizer, scheduler)
    elif include_start:  # fine-tuning may make things worse: the pruned network is a candidate
        best.offer(t.evaluate(t.data.val), t.net)
        t.save(phase, 0, optimizer, scheduler, best)
    t.progress.phase_start(phase.value, epochs, len(t.loader))
    while epoch < epochs and not (stop_at is not None and best.score is not None
                                  and best.score.accuracy >= stop_at):
        epoch += 1
        if t.sampler is not None:  # a different shuffle for every epoch of both phases
            t.sampler.set_epoch(epoch if phase is Phase.TRAIN else 10_000 + epoch)
        t.train_mode()
        loss, acc = train_epoch(t.model, t.loader, optimizer, device=t.device,
                                after_step=guard.restore, world=t.world, progress=t.progress,
                                precision=t.precision)
        t.sync()
        if scheduler is not None:
            scheduler.step()
        val = t.evaluate(t.data.val)
        t.progress.epoch_end(epoch, loss, acc, val.accuracy)
        best.offer(val, t.net)
        t.save(phase, epoch, optimizer, scheduler, best)
    end = None if stop_at is None else t.checkpoint_of(phase, epoch, optimizer, scheduler, best,
                                                       keep=True)
    t.progress.phase_end(phase.value)
    best.restore(t.net)
    assert best.score is not None  # epochs >= 1 ran, or a checkpoint had one
    return best.score.accuracy, end


def _prune_measured(t: Training, ratio: float, reserve: int) -> None:
    """:func:`_prune`, with the test accuracy before and after it in ``t.metrics`` (measured
    once when pruning changed no weight: the network is the same)."""
    t.metrics["accuracy_before_prune"] = t.evaluate(t.data.test).accuracy
    changed = _prune(t, ratio, reserve)
    t.metrics["accuracy_after_prune"] = (t.evaluate(t.data.test).accuracy if changed
                                         else t.metrics["accuracy_before_prune"])


@torch.no_grad()
def _prune(t: Training, ratio: float, reserve: int = 0) -> int:
    """Release ``ratio`` of the trained weights (more where ``reserve`` needs room) and zero
    them; with a reserve, ``t.metrics`` counts the layers it raised. Returns how many weights
    this changed (released ones that were not zero already)."""
    weights = {k: m.get_parameter(n + "_orig") for k, (m, n) in t.packed.items()}
    owners = {k: m.get_buffer(n + "_owners") for k, (m, n) in t.packed.items()}
    scope = t.config.prune_scope
    new_owners = assign_owners(weights, owners, t.task, ratio, scope, reserve)
    if reserve:
        plain = assign_owners(weights, owners, t.task, ratio, scope)
        raised = sum(int((new_owners[k] == 0).sum()) > int((plain[k] == 0).sum())
                     for k in t.packed)
        t.metrics["reserve_raised_layers"] = raised
        if raised:
            t.progress.message(f"reserve {reserve}: released more than ratio {ratio:g} in "
                               f"{raised} of {len(t.packed)} layers to leave room")
    if t.pack.free_init == "kept":  # kept aside for the next task: the weights stay zero
        t.released = {k: weights[k][new_owners[k] == 0].detach().clone() for k in t.packed}
    zeroed = sum(int(((new_owners[k] == 0) & (weights[k] != 0)).sum()) for k in t.packed)
    for key in t.packed:
        owners[key].copy_(new_owners[key])
        weights[key].masked_fill_(new_owners[key] == 0, 0.0)  # free weights are zero at rest
    t.sync()  # deterministic already; broadcasting makes it so by construction
    return zeroed


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
