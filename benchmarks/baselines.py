"""The baselines PackNet is compared with, in plain torch with one small shared trainer.

Every method gets the same network (``build_network`` of the same :class:`ArchSpec`, same
initialization seed), the same optimizer and the same schedule as packtool's add-task:
``epochs`` at ``lr`` (x0.1 every ``lr_decay_epochs``), then ``finetune_epochs`` at
``finetune_lr`` with a fresh optimizer, the best epoch of each phase kept on the validation split
by the same rule (:class:`packtool.loop.BestEpoch`: higher validation accuracy, ties broken by
lower validation loss; the fine-tuning phase starts from its starting point as a candidate).
Epochs run packtool's own loop (:func:`packtool.loop.train_epoch`). Only PackNet's prune step
between the two phases is missing.

* separate networks: one network per task (upper bound; stores ``T`` networks);
* fine-tuning: one shared backbone, a new head per task, every backbone weight trained on each
  new task in turn (old heads are kept and not trained again): shows forgetting;
* joint: one shared backbone and one head per task trained on all tasks at once, every batch
  mixing tasks (each sample's loss through its own task's head): not sequential at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from packtool import Measurement, TrainConfig, evaluate
from packtool.loop import BestEpoch, make_optimizer, make_scheduler, train_epoch
from packtool.models import ArchSpec, anatomy, build_network


@dataclass
class TaskTensors:
    """One task's data as tensors (the values packtool's datasets yield, materialized once)."""

    name: str
    classes: list[str]
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


class MultiHead(nn.Module):
    """A backbone (the network without its classifier) and one head per task."""

    def __init__(self, spec: ArchSpec, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same initial backbone as Pack.create(seed=seed)
            net = build_network(spec)
        anat = anatomy(net)
        net.set_submodule(anat.classifier, nn.Identity())
        self.backbone = net
        self.in_features, self.head_bias = anat.in_features, anat.head_bias
        self.heads = nn.ModuleList()

    def add_head(self, classes: int) -> int:
        self.heads.append(nn.Linear(self.in_features, classes, bias=self.head_bias))
        return len(self.heads) - 1

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](self.backbone(x))

    def loss(self, x: Tensor, y: Tensor, tasks: Tensor) -> Tensor:
        """Mean cross-entropy, each sample through its own task's head."""
        features = self.backbone(x)
        total = features.new_zeros(())
        for t in tasks.unique().tolist():
            rows = tasks == t
            total = total + nn.functional.cross_entropy(self.heads[t](features[rows]), y[rows],
                                                        reduction="sum")
        return total / len(y)

    def view(self, task: int) -> nn.Module:
        """Task ``task`` as a plain ``x -> logits`` module (shares this module's weights)."""
        return _TaskView(self, task)

    def stored_values(self) -> int:
        """Floating-point values needed to serve every task (backbone state + all heads)."""
        return sum(v.numel() for v in self.state_dict().values() if v.is_floating_point())


class _TaskView(nn.Module):
    def __init__(self, model: MultiHead, task: int) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.task)


def accuracy(model: MultiHead, task: int, dataset: Dataset) -> float:
    return validate(model, task, dataset).accuracy


def validate(model: MultiHead, task: int, dataset: Dataset) -> Measurement:
    return evaluate(model.view(task), dataset, batch_size=256)


def fit(model: MultiHead, params: Sequence[nn.Parameter], train: Dataset,
        val_score: Callable[[], Measurement], config: TrainConfig) -> None:
    """Train ``params`` on ``train`` (items ``(x, y, task)``) with packtool's schedule."""
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=generator)
    _phase(model, params, loader, val_score, config, config.epochs, config.lr,
           config.lr_decay_epochs, include_start=False)
    _phase(model, params, loader, val_score, config, config.finetune_epochs, config.finetune_lr,
           0, include_start=True)


def _phase(model: MultiHead, params: Sequence[nn.Parameter], loader: DataLoader,
           val_score: Callable[[], Measurement], config: TrainConfig, epochs: int, lr: float,
           decay_every: int, include_start: bool) -> None:
    if epochs == 0:
        return
    optimizer = make_optimizer(params, config, lr)
    scheduler = make_scheduler(optimizer, decay_every)
    best = BestEpoch()
    if include_start:
        best.offer(val_score(), model)
    for _ in range(epochs):
        model.train()
        train_epoch(model, loader, optimizer, loss_fn=_multi_head_loss)
        if scheduler is not None:
            scheduler.step()
        best.offer(val_score(), model)
    best.restore(model)


def _multi_head_loss(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, None]:
    x, y, tasks = batch
    return model.loss(x, y, tasks), None


def with_task(data: TensorDataset, task: int) -> TensorDataset:
    """``(x, y)`` items -> ``(x, y, task)``."""
    x, y = data.tensors
    return TensorDataset(x, y, torch.full_like(y, task))


@dataclass
class SequenceRun:
    """Accuracies of one method on one task sequence.

    ``just_learned[j]``: task j's test accuracy right after it was learned (None for joint
    training, which learns all at once); ``final[j]``: after the last task; ``ratios``: for
    PackNet, the prune ratio each task but the last used.
    """

    final: list[float]
    just_learned: list[float | None]
    stored_values: int
    ratios: list[float] = field(default_factory=list)


def run_separate(spec: ArchSpec, tasks: Sequence[TaskTensors], config: TrainConfig,
                 seed: int) -> SequenceRun:
    models, just = [], []
    for data in tasks:
        model = MultiHead(spec, seed)
        torch.manual_seed(config.seed)  # head initialization, as packtool's add-task
        model.add_head(len(data.classes))
        fit(model, list(model.parameters()), with_task(data.train, 0),
            lambda m=model, d=data: validate(m, 0, d.val), config)
        models.append(model)
        just.append(accuracy(model, 0, data.test))
    final = [accuracy(m, 0, d.test) for m, d in zip(models, tasks)]
    return SequenceRun(final, just, sum(m.stored_values() for m in models))


def run_finetune(spec: ArchSpec, tasks: Sequence[TaskTensors], config: TrainConfig,
                 seed: int) -> SequenceRun:
    model = MultiHead(spec, seed)
    just = []
    for data in tasks:
        torch.manual_seed(config.seed)
        k = model.add_head(len(data.classes))
        params = [*model.backbone.parameters(), *model.heads[k].parameters()]
        fit(model, params, with_task(data.train, k),
            lambda k=k, d=data: validate(model, k, d.val), config)
        just.append(accuracy(model, k, data.test))
    final = [accuracy(model, k, d.test) for k, d in enumerate(tasks)]
    return SequenceRun(final, just, model.stored_values())


def run_joint(spec: ArchSpec, tasks: Sequence[TaskTensors], config: TrainConfig,
              seed: int) -> SequenceRun:
    model = MultiHead(spec, seed)
    torch.manual_seed(config.seed)
    for data in tasks:
        model.add_head(len(data.classes))
    train = ConcatDataset([with_task(d.train, k) for k, d in enumerate(tasks)])

    def val_score() -> Measurement:  # model selection on the mean validation accuracy and loss
        scores = [validate(model, k, d.val) for k, d in enumerate(tasks)]
        return Measurement(sum(s.accuracy for s in scores) / len(scores),
                     sum(s.loss for s in scores) / len(scores))

    fit(model, list(model.parameters()), train, val_score, config)
    final = [accuracy(model, k, d.test) for k, d in enumerate(tasks)]
    return SequenceRun(final, [None] * len(tasks), model.stored_values())
