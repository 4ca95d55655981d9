"""The steps of an add-task on its :class:`~packtool.training.Training`: a phase of epochs
(training or fine-tuning) that keeps the best epoch on validation, pruning, and the planner's
search for ``prune="auto"`` (:func:`prune_auto`). :mod:`packtool.lifecycle` puts them in
order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .evaluation import Measurement
from .formats.checkpoint import Checkpoint
from .loop import (
    BestEpoch,
    FrozenWeightGuard,
    RngState,
    make_optimizer,
    make_scheduler,
    snapshot,
    train_epoch,
)
from .method import Phase, assign_owners, select_all, with_masks
from .planner import Decision, Pruning, candidates, noise_warning, plan, target
from .training import Training


def run_phase(t: Training, phase: Phase, epochs: int, lr: float, decay_every: int,
              start: Checkpoint | None = None, stop_at: float | None = None
              ) -> tuple[float, Checkpoint | None]:
    """``epochs`` of ``phase``; the best of them on validation is kept. Returns its accuracy
    and, with ``stop_at``, where the phase ended, as a checkpoint held in memory.

    Fine-tuning keeps one of its own epochs, not the pruned network it starts from (unless
    ``epochs`` is 0): that network's validation score picked training's best epoch, so on a
    small split it beat every fine-tuned epoch by luck and fine-tuning was silently skipped.

    With ``stop_at`` the phase stops early, paused, once its best validation accuracy reaches
    ``stop_at``; ``run_phase`` from that checkpoint finishes it exactly as if it had not stopped.
    """
    kept_at = f"best_epoch_{phase.value}"  # the epoch kept, for a refit (t.metrics)
    if start is not None:  # a checkpoint stores no masks: select_all derives them
        t.net.load_state_dict(with_masks(start.net, t.net))
        if kept_at in start.metrics:
            t.metrics[kept_at] = start.metrics[kept_at]
    select_all(t.net, t.task, phase)
    if epochs == 0:
        t.metrics[kept_at] = 0
        return t.evaluate(t.data.val).accuracy, None
    guard = FrozenWeightGuard(list(t.packed.values()), t.task, phase)
    optimizer = make_optimizer(guard.trainable_weights() + t.head_and_private(), t.config, lr)
    scheduler = make_scheduler(optimizer, decay_every)
    best, epoch = BestEpoch(), 0
    if start is not None:
        if start.best_state is not None:  # None: saved before its first epoch
            best = BestEpoch(Measurement(start.best_val, start.best_val_loss),
                             with_masks(start.best_state, t.net))
        epoch = start.epoch
        t.restore(start, optimizer, scheduler)
    elif phase is Phase.FINETUNE:  # saved as pruned: a resume does not prune again
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
        # A refit has no validation split of its own: it keeps its last epoch.
        if best.offer(val, t.net) or (t.keep_last and best.take(val, t.net)):
            t.metrics[kept_at] = epoch
        t.save(phase, epoch, optimizer, scheduler, best)
        # Said once saved: an epoch reported done is one a resume does not repeat.
        t.progress.epoch_end(epoch, loss, acc, val.accuracy)
    end = None if stop_at is None else t.checkpoint_of(phase, epoch, optimizer, scheduler, best,
                                                       keep=True)
    t.progress.phase_end(phase.value)
    best.restore(t.net)
    assert best.score is not None  # epochs >= 1 ran, or a checkpoint had one
    return best.score.accuracy, end


def prune_measured(t: Training, ratio: float, reserve: int) -> None:
    """:func:`prune`, with the test accuracy before and after it in ``t.metrics`` (measured
    once when pruning changed no weight: the network is the same)."""
    if ratio or reserve:
        t.progress.message(f"pruning: releasing {ratio:g} of the task's weights (by magnitude), "
                           "measuring test accuracy before and after")
    t.metrics["accuracy_before_prune"] = t.evaluate(t.data.test).accuracy
    changed = prune(t, ratio, reserve)
    t.metrics["accuracy_after_prune"] = (t.evaluate(t.data.test).accuracy if changed
                                         else t.metrics["accuracy_before_prune"])


@torch.no_grad()
def prune(t: Training, ratio: float, reserve: int = 0) -> int:
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


@dataclass
class AfterTraining:
    """The network and random state right after training (where every pruning starts), and
    its validation accuracy (the reference the planner's tolerance counts from)."""

    state: dict[str, Tensor]
    rng: RngState
    reference: float


def prune_auto(t: Training, pruning: Pruning, after: AfterTraining, start: Checkpoint | None
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
        prune(t, ratio, pruning.reserve)
        select_all(t.net, t.task, Phase.FINETUNE)
        return t.evaluate(t.data.val).accuracy

    def finetune(ratio: float) -> tuple[float, Any]:
        if ratio in done:  # a trial of the run this one resumes
            return done[ratio], t.search["best"] if ratio == t.search["best_ratio"] else None
        here = start if start is not None and resumed.get("current") == ratio else None
        if here is None:
            t.load(after.state, Phase.TRAIN)
            prune(t, ratio, pruning.reserve)
            after.rng.restore(t.generator, t.device)
        t.search["current"] = ratio
        val, end = run_phase(t, Phase.FINETUNE, t.config.finetune_epochs,
                             t.config.finetune_lr, 0, here, stop_at=goal)
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
    prune_measured(t, decision.ratio, pruning.reserve)
    winner = next(c for c in decision.search if c.ratio == decision.ratio)
    # The epoch the winner keeps comes from its own paused state (another trial may have run
    # last); a trial that had run all its epochs paused nowhere: unknown, a refit runs them all.
    t.metrics.pop("best_epoch_finetune", None)
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
    val, _ = run_phase(t, Phase.FINETUNE, t.config.finetune_epochs, t.config.finetune_lr, 0,
                       start or paused)
    return val
