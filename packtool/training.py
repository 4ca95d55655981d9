"""The add-task lifecycle: train free weights -> prune -> fine-tune survivors -> freeze.

Frozen weights are guarded by restoring them after every optimizer step
(:class:`FrozenWeightGuard`): zeroing their gradients is not enough, because weight decay and
optimizer momentum still move them. Old tasks' biases, norm statistics and heads live in their
task records and are never loaded into the network being trained, so they cannot drift.

Model selection uses the validation split carved from the training data; the held-out split is
only measured (before pruning, after pruning, final), never used to choose.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import distributed
from .distributed import World, sum_counts, sum_floats
from .distributed import all_ok as dist_all_ok
from .errors import CapacityError, DataError, PackToolError, TaskError, one_line
from .formats.checkpoint import Checkpoint
from .method import MAX_TASKS, Phase, assign_owners, select_all, tensor_at, trainable_mask
from .models import new_head

if TYPE_CHECKING:
    from .data import TaskData
    from .pack import Pack

OPTIMIZERS = ("sgd", "adam", "adamw")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class TrainConfig:
    """Hyperparameters of one add-task run. Defaults follow the paper's official scripts.

    Attributes:
        epochs: training epochs on the free weights (0 skips training, e.g. a pretrained task).
        finetune_epochs: epochs of fine-tuning the kept weights after pruning.
        lr, finetune_lr: learning rates of the two phases.
        lr_decay_epochs: multiply the training lr by 0.1 every this many epochs (0: never).
        optimizer: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``.
        weight_decay: applied by the optimizer; frozen weights are protected by the guard.
        batch_size, workers: data loading.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds head initialization, dropout and shuffling; same seed, same CPU result.
        prune_scope: ``layer`` (exact ratio per layer, the paper) or ``global`` (across layers).
    """

    epochs: int = 20
    finetune_epochs: int = 10
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    lr_decay_epochs: int = 10
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    prune_scope: str = "layer"

    def validate(self) -> None:
        checks = [
            (self.epochs >= 0 and self.finetune_epochs >= 0, "epochs must be >= 0"),
            (self.lr > 0 and self.finetune_lr > 0, "learning rates must be > 0"),
            (self.lr_decay_epochs >= 0, "lr_decay_epochs must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight decay >= 0"),
            (self.batch_size >= 1 and self.workers >= 0, "batch size >= 1 and workers >= 0"),
            (self.prune_scope in ("layer", "global"), "prune scope must be layer or global"),
        ]
        for ok, message in checks:
            if not ok:
                raise TaskError(message)
        resolve_device(self.device)


@dataclass
class TaskResult:
    """What :func:`add_task` reports; the same numbers are stored in the task record."""

    task: str
    index: int
    accuracy: float
    accuracy_before_prune: float
    accuracy_after_prune: float
    val_accuracy: float
    weights_owned: int
    free_fraction: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """Receives training progress; subclass and override what you want to show. No-op here."""

    def phase_start(self, phase: str, epochs: int, batches: int) -> None: ...

    def batch_end(self, batch: int, loss: float, accuracy: float) -> None: ...

    def epoch_end(self, epoch: int, loss: float, accuracy: float, val_accuracy: float) -> None: ...

    def phase_end(self, phase: str) -> None: ...

    def message(self, text: str) -> None: ...


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA if available else CPU; a CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise PackToolError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PackToolError("CUDA was requested but is not available; use `device=cpu` or "
                            "`device=auto`")
    if dev.type not in ("cpu", "cuda"):
        raise PackToolError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


class FrozenWeightGuard:
    """Keeps the non-trainable entries of masked weights bit-identical across optimizer steps.

    Call :meth:`restore` after every ``optimizer.step()``. It computes
    ``frozen_values + w * trainable`` in place, in one fused pass (``addcmul``): exact for both
    kinds of entry (``0 + x * 1`` and ``v + x * 0``) whatever finite values the optimizer wrote
    (weight decay, momentum, Adam moments). Training stops before non-finite values could
    matter: a NaN or infinite loss is an error (:func:`add_task`).

    Args:
        packed: ``(module, name)`` of every tensor reparametrized by
            :class:`~packtool.method.PackNetPruning`.
        task, phase: what is being trained; decides the trainable entries.
    """

    def __init__(self, packed: Sequence[tuple[nn.Module, str]], task: int, phase: Phase) -> None:
        self.weights: list[Tensor] = []
        self.keep: list[Tensor] = []  # 1.0 where trainable, 0.0 elsewhere (weight's dtype)
        self.frozen_values: list[Tensor] = []  # the frozen entries' values, 0 where trainable
        with torch.no_grad():
            for module, name in packed:
                weight = module.get_parameter(name + "_orig")
                trainable = trainable_mask(module.get_buffer(name + "_owners"), task, phase)
                self.weights.append(weight)
                self.keep.append(trainable.to(weight.dtype))
                self.frozen_values.append(weight.detach() * ~trainable)

    def trainable_weights(self) -> list[Tensor]:
        """Weights with at least one trainable entry (the ones worth giving an optimizer)."""
        return [w for w, keep in zip(self.weights, self.keep) if bool(keep.any())]

    @torch.no_grad()
    def restore(self) -> None:
        for weight, keep, frozen in zip(self.weights, self.keep, self.frozen_values):
            # One fused pass. (torch.where on a bool mask measured ~7x slower on CPU.)
            torch.addcmul(frozen, weight, keep, out=weight)


_END = object()


def batches(loader: DataLoader, world: World | None = None,
            device: torch.device | None = None) -> Iterator[Any]:
    """Iterate ``loader``, with one-line data errors and, across ranks, agreed failure.

    DataLoader re-raises a worker's exception with the worker's traceback folded into the
    message; this keeps the original one-line ``DataError`` message. With ``world``, every rank
    checks at every step that all ranks got their batch, so one rank's bad file stops all of
    them instead of leaving the others waiting in a collective. Every rank must then see the
    same number of batches (true for ``DistributedSampler``).
    """
    iterator = iter(loader)
    while True:
        error: PackToolError | None = None
        try:
            item = next(iterator)
        except StopIteration:
            item = _END
        except DataError as exc:
            error = DataError(one_line(exc))
        if not dist_all_ok(world, error is None, device or torch.device("cpu")):
            raise error or PackToolError("another process failed to read its data; see its error")
        if item is _END:
            return
        yield item


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """A model on one split: top-1 accuracy (0..1) and mean cross-entropy loss."""

    accuracy: float
    loss: float

    def better_than(self, other: Score | None) -> bool:
        """The model-selection rule: higher accuracy; on equal accuracy, lower loss.

        The loss settles ties, which are common: a small validation split saturates (100% after
        a few epochs), and keeping the first epoch that reached it keeps an undertrained model.
        """
        return other is None or (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


def accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
             device: str | torch.device = "cpu", workers: int = 0,
             world: World | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``dataset``: :func:`score`'s accuracy."""
    return score(model, dataset, batch_size=batch_size, device=device, workers=workers,
                 world=world).accuracy


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
          device: str | torch.device = "cpu", workers: int = 0,
          world: World | None = None) -> Score:
    """Accuracy and mean loss of ``model`` in eval mode on ``dataset``; restores the mode.

    With ``world``, each rank evaluates its ``DistributedSampler`` shard and the sums are
    reduced; the sampler's padding samples are not counted, so the result is exact and equal on
    every rank.
    """
    n = len(dataset)
    if n == 0:
        raise DataError("the evaluation split is empty")
    device = torch.device(device)
    sampler = None
    if world is not None:
        sampler = DistributedSampler(dataset, world.size, world.rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, sampler=sampler)
    was_training = model.training
    model.eval()
    correct = seen = 0
    loss_sum = 0.0
    try:
        for inputs, labels in batches(loader, world, device):
            logits = model(inputs.to(device))
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
    return Score(correct / n, loss_sum / n)


# ------------------------------------------------------------------------------------------------
# Adding a task
# ------------------------------------------------------------------------------------------------


def add_task(pack: Pack, name: str, data: TaskData, prune: float,
             config: TrainConfig | None = None, *, progress: Progress | None = None,
             checkpoint: str | os.PathLike | None = None, resume: bool = False) -> TaskResult:
    """Add task ``name`` to ``pack``: the PackNet lifecycle.

    1. Train the free weights, a new head and the task's private state for ``config.epochs``
       with every earlier task's weights active but frozen; keep the best epoch on validation
       (accuracy, ties broken by lower loss).
    2. Release ``prune`` of the trained weights per layer (exact counts, smallest ``|w|``) and
       zero them; the rest become owned by the new task.
    3. Fine-tune the kept weights for ``config.finetune_epochs``; keep the best on validation.
    4. Freeze: commit weights, owners and the task record to ``pack``.

    The pack is modified only in step 4, after everything else succeeded; an exception or
    ``KeyboardInterrupt`` leaves it as it was.

    With ``checkpoint``, the run's state is saved there (atomically) after every epoch; with
    ``resume`` too, a run interrupted at any point continues from its last completed epoch and
    ends with the same result as an uninterrupted run (bit-identical on CPU). A checkpoint found
    without ``resume`` is an error, never silently used or overwritten. The checkpoint is left
    in place on success; delete it once the pack is saved.
    """
    config = config or TrainConfig()
    config.validate()
    _check_new_task(pack, name, prune, data)
    world = distributed.current()
    device = distributed.rank_device(world, resolve_device(config.device))
    progress = progress if progress is not None and (world is None or world.is_main) else None
    progress = progress or Progress()
    started = time.perf_counter()
    task = len(pack.tasks) + 1
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    identity = {"task": name, "index": task, "prune": float(prune), "data": data.spec,
                "config": asdict(config), "pack": pack.state()["digest"] if checkpoint else None}
    start = _resume_point(checkpoint, resume, identity, progress)
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        run = _TaskRun(pack, task, data, config, device, progress, world)
        if world is None or world.is_main:  # one writer
            run.checkpoint = checkpoint
        run.identity = identity
        metrics = run.train_prune_finetune(prune, start)
        candidate = run.commit(name, prune, metrics)
    distributed.check_same_everywhere(
        world, {**candidate.shared, **{f"owners/{k}": v for k, v in candidate.owners.items()}},
        device)
    final = accuracy(candidate.model_for(task, device), data.test, device=device, world=world)
    record = candidate.tasks[-1]
    record.metrics["accuracy"] = final
    pack.shared, pack.owners, pack.tasks = candidate.shared, candidate.owners, candidate.tasks
    pack.pretrained_head = candidate.pretrained_head
    owned = sum(c.owned[task - 1] for c in pack.capacity())
    return TaskResult(
        task=name, index=task, accuracy=final,
        accuracy_before_prune=metrics["accuracy_before_prune"],
        accuracy_after_prune=metrics["accuracy_after_prune"],
        val_accuracy=metrics["val_accuracy"], weights_owned=owned,
        free_fraction=pack.free_fraction, seconds=time.perf_counter() - started,
    )


def _resume_point(path: str | os.PathLike | None, resume: bool, identity: dict[str, Any],
                  progress: Progress) -> Checkpoint | None:
    if path is None or not Path(path).exists():
        if resume:
            progress.message("no checkpoint to resume from; starting from the beginning")
        return None
    if not resume:
        found = Checkpoint.load(path)
        raise TaskError(
            f"{path} holds an interrupted add-task ({found.describe()}); pass `resume=True` "
            "to continue it or `restart=True` to discard it"
        )
    start = Checkpoint.load(path)
    start.check_identity(identity, path)
    progress.message(f"resuming {start.describe()}")
    return start


def _check_new_task(pack: Pack, name: str, prune: float, data: TaskData) -> None:
    if not name or not name.strip():
        raise TaskError("task name must not be empty")
    if name in pack.task_names:
        raise TaskError(f"task {name!r} already exists; pick another `name`")
    if not (isinstance(prune, (int, float)) and 0.0 <= prune < 1.0 and math.isfinite(prune)):
        raise TaskError(f"prune ratio must be in [0, 1), got {prune}")
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


class _TaskRun:
    """The state of one add-task run: a live network and its loaders."""

    def __init__(self, pack: Pack, task: int, data: TaskData, config: TrainConfig,
                 device: torch.device, progress: Progress, world: World | None = None) -> None:
        self.pack, self.task, self.data, self.config = pack, task, data, config
        self.device, self.progress, self.world = device, progress, world
        self.anatomy = pack.anatomy()
        head, private = self._initial_state(len(data.classes))
        self.net = pack.network(task, Phase.TRAIN, head=head, private=private, device=device)
        self.packed = {key: tensor_at(self.net, key) for key in self.anatomy.prunable}
        # Under the paper's policy, task 1's biases and norms are frozen for every later task.
        self.private_frozen = pack.policy == "frozen" and task > 1
        self.checkpoint: str | os.PathLike | None = None
        self.identity: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.sampler = None
        if world is not None:  # each rank trains on its shard; the batch size is per process
            self.sampler = DistributedSampler(data.train, world.size, world.rank, shuffle=True,
                                              seed=config.seed)
        self.train_loader = DataLoader(
            data.train, batch_size=config.batch_size, shuffle=self.sampler is None,
            sampler=self.sampler, generator=self.generator, num_workers=config.workers,
            pin_memory=device.type == "cuda",
        )
        # DDP after the PackNet reparametrization: masks and owners are buffers it broadcasts.
        self.model: nn.Module = self.net
        if world is not None:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)
        self.epochs_run = 0

    def _initial_state(self, classes: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        pack = self.pack
        previous = pack.tasks[-1] if pack.tasks else None
        private = pack.private_state(previous) if previous else pack.initial_private
        pretrained = pack.pretrained_head
        if not pack.tasks and pretrained and pretrained["weight"].shape[0] == classes:
            return dict(pretrained), dict(private)  # the network's own pretrained task
        head = new_head(self.anatomy, classes).to(pack.device)
        return {k: v.detach().clone() for k, v in head.state_dict().items()}, dict(private)

    # -- phases -------------------------------------------------------------------------------

    def train_prune_finetune(self, prune: float, start: Checkpoint | None = None
                             ) -> dict[str, float]:
        config, test = self.config, self.data.test
        if start is None or start.phase == Phase.TRAIN.value:
            self._phase(Phase.TRAIN, config.epochs, config.lr, config.lr_decay_epochs, start)
            start = None
            self.metrics["accuracy_before_prune"] = self._accuracy(test)
            self._prune(prune)
            self.metrics["accuracy_after_prune"] = self._accuracy(test)
        else:
            self.metrics.update(start.metrics)
        best_val = self._phase(Phase.FINETUNE, config.finetune_epochs, config.finetune_lr, 0,
                               start, include_start=True)
        return {**self.metrics, "val_accuracy": best_val}

    def _phase(self, phase: Phase, epochs: int, lr: float, decay_every: int,
               start: Checkpoint | None = None, include_start: bool = False) -> float:
        if start is not None:
            self.net.load_state_dict(start.net)
        select_all(self.net, self.task, phase)
        if epochs == 0:
            return self._val_score().accuracy
        guard = FrozenWeightGuard(list(self.packed.values()), self.task, phase)
        optimizer = self._optimizer(guard.trainable_weights(), lr)
        scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, decay_every, 0.1)
                     if decay_every else None)
        best: Score | None = None
        best_state, first = None, 1
        if start is not None:
            best = Score(start.best_val, start.best_val_loss)
            best_state, first = start.best_state, start.epoch + 1
            self._restore_optimizer(start, optimizer, scheduler)
        elif include_start:
            best, best_state = self._val_score(), _snapshot(self.net)
            self._save(phase, 0, optimizer, scheduler, best, best_state)
        self.progress.phase_start(phase.value, epochs, len(self.train_loader))
        for epoch in range(first, epochs + 1):
            if self.sampler is not None:  # a different shuffle for every epoch of both phases
                self.sampler.set_epoch(epoch if phase is Phase.TRAIN else 10_000 + epoch)
            loss, acc = self._epoch(optimizer, guard)
            self._sync()
            if scheduler is not None:
                scheduler.step()
            val = self._val_score()
            self.progress.epoch_end(epoch, loss, acc, val.accuracy)
            if val.better_than(best):
                best, best_state = val, _snapshot(self.net)
            self._save(phase, epoch, optimizer, scheduler, best, best_state)
        self.progress.phase_end(phase.value)
        if best_state is not None:
            self.net.load_state_dict(best_state)
        assert best is not None  # epochs >= 1 ran, or a checkpoint had one
        return best.accuracy

    # -- checkpoints --------------------------------------------------------------------------

    def _sync(self) -> None:
        """Make every rank hold rank 0's state (norm statistics drift with local batches)."""
        distributed.broadcast_state(self.world, list(self.net.state_dict().values()))

    def _save(self, phase: Phase, epoch: int, optimizer: torch.optim.Optimizer,
              scheduler: Any, best: Score | None, best_state: dict[str, Tensor] | None) -> None:
        if self.checkpoint is None:
            return
        cuda = self.device.type == "cuda"
        Checkpoint(
            identity=self.identity, phase=phase.value, epoch=epoch, net=self.net.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            best_val=best.accuracy if best else -1.0,
            best_val_loss=best.loss if best else math.inf,
            best_state=best_state, metrics=dict(self.metrics),
            rng=torch.get_rng_state(), loader_rng=self.generator.get_state(),
            cuda_rng=torch.cuda.get_rng_state(self.device) if cuda else None,
        ).save(self.checkpoint)

    def _restore_optimizer(self, start: Checkpoint, optimizer: torch.optim.Optimizer,
                           scheduler: Any) -> None:
        if start.optimizer is not None:
            optimizer.load_state_dict(start.optimizer)
        if scheduler is not None and start.scheduler is not None:
            scheduler.load_state_dict(start.scheduler)
        torch.set_rng_state(start.rng)
        self.generator.set_state(start.loader_rng)
        if start.cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(start.cuda_rng, self.device)

    def _epoch(self, optimizer: torch.optim.Optimizer, guard: FrozenWeightGuard
               ) -> tuple[float, float]:
        self._train_mode()
        loss_fn = nn.CrossEntropyLoss()
        total_loss, correct, seen = 0.0, 0, 0
        loader = batches(self.train_loader, self.world, self.device)
        for i, (inputs, labels) in enumerate(loader, start=1):
            inputs = inputs.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = self.model(inputs)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            guard.restore()
            batch = labels.numel()
            total_loss += float(loss.detach()) * batch
            correct += int((logits.argmax(1) == labels).sum())
            seen += batch
            self.progress.batch_end(i, total_loss / seen, correct / seen)
        # Checked once per epoch on every rank together: a rank raising alone would leave the
        # others waiting in a collective.
        if not dist_all_ok(self.world, math.isfinite(total_loss), self.device):
            raise TaskError("training diverged: the loss became NaN or infinite; lower the "
                            "learning rate (`lr`, `finetune_lr`)")
        return total_loss / max(seen, 1), correct / max(seen, 1)

    def _optimizer(self, weights: list[Tensor], lr: float) -> torch.optim.Optimizer:
        params = weights + self._head_params() + self._private_params()
        config = self.config
        if config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=config.weight_decay)

    def _head_params(self) -> list[Tensor]:
        return list(self.net.get_submodule(self.anatomy.classifier).parameters())

    def _private_params(self) -> list[Tensor]:
        private = set(self.anatomy.private)
        params = [p for n, p in self.net.named_parameters() if n in private]
        for p in params:
            p.requires_grad_(not self.private_frozen)
        return [] if self.private_frozen else params

    def _train_mode(self) -> None:
        self.net.train()
        if self.private_frozen:  # running statistics would otherwise keep updating
            for module in self.net.modules():
                if isinstance(module, NORM_TYPES):
                    module.eval()

    def _accuracy(self, dataset: Dataset) -> float:
        return self._score(dataset).accuracy

    def _val_score(self) -> Score:
        """What model selection ranks epochs by (see :meth:`Score.better_than`)."""
        return self._score(self.data.val)

    def _score(self, dataset: Dataset) -> Score:
        return score(self.net, dataset, batch_size=max(self.config.batch_size, 256),
                     device=self.device, workers=self.config.workers, world=self.world)

    @torch.no_grad()
    def _prune(self, ratio: float) -> None:
        weights = {k: m.get_parameter(n + "_orig") for k, (m, n) in self.packed.items()}
        owners = {k: m.get_buffer(n + "_owners") for k, (m, n) in self.packed.items()}
        new_owners = assign_owners(weights, owners, self.task, ratio, self.config.prune_scope)
        for key in self.packed:
            owners[key].copy_(new_owners[key])
            weights[key].masked_fill_(new_owners[key] == 0, 0.0)  # free weights are zero at rest
        self._sync()  # deterministic already; broadcasting makes it so by construction

    # -- commit -------------------------------------------------------------------------------

    def commit(self, name: str, prune: float, metrics: dict[str, float]) -> Pack:
        """A new Pack holding the old tasks and this one; ``self.pack`` is not modified."""
        from .pack import Pack, TaskRecord, utc_now

        pack, anat = self.pack, self.anatomy
        store = pack.device
        state = self.net.state_dict()
        shared = {k: state[f"{k}_orig"].detach().to(store).clone() for k in anat.prunable}
        owners = {k: state[f"{k}_owners"].to(store).clone() for k in anat.prunable}
        _check_frozen_unchanged(pack, shared)
        head_prefix = anat.classifier + "."
        head = {k[len(head_prefix):]: v.detach().to(store).clone()
                for k, v in state.items() if k.startswith(head_prefix)}
        private = {} if self.private_frozen else {
            k: state[k].detach().to(store).clone() for k in anat.private
        }
        record = TaskRecord(
            name=name, index=self.task, classes=list(self.data.classes), data=self.data.spec,
            prune=float(prune), hparams=asdict(self.config), metrics=dict(metrics),
            created=utc_now(), head=head, private=private,
        )
        candidate = Pack(pack.spec, shared, owners, pack.initial_private,
                         [*pack.tasks, record], policy=pack.policy,
                         pretrained_head=pack.pretrained_head)
        candidate._anatomy = anat
        return candidate


def _check_frozen_unchanged(pack: Pack, shared: dict[str, Tensor]) -> None:
    """Refuse to commit if any weight of an earlier task moved (a guard failure is a bug)."""
    for key, old in pack.shared.items():
        owned = pack.owners[key] != 0
        if not torch.equal(old[owned], shared[key][owned]):
            raise RuntimeError(f"internal error: frozen weights of {key} changed during training")


def _snapshot(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
