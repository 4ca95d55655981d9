"""The training loop: one epoch, the optimizer and schedule, and keeping the best epoch.

:func:`train_epoch` is the one epoch loop of packtool: the add-task lifecycle runs it with the
frozen-weight guard after every step, and the benchmarks' baselines run it on plain networks, so
every method is trained the same way. :class:`BestEpoch` is the model-selection rule
(:meth:`~packtool.evaluation.Measurement.better_than`) with the state it keeps.

Frozen weights are guarded by restoring them after every optimizer step
(:class:`FrozenWeightGuard`): zeroing their gradients is not enough, because weight decay and
optimizer momentum still move them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch._dynamo
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .config import TrainConfig
from .distributed import World, all_ok, batches
from .errors import TaskError
from .evaluation import Measurement
from .method import Phase, trainable_mask
from .progress import Progress

# torch.optim imports torch._dynamo when the first optimizer is made (its methods are wrapped to
# stay out of compiled graphs): seconds on a small machine. Imported with this module, it is a
# start-up cost of training, not a cost the first task's measured time would carry.

#: ``loss_fn(model, batch) -> (loss, logits or None)``; a batch is ``(inputs, labels, *rest)``.
LossFn = Callable[[nn.Module, Sequence[Tensor]], tuple[Tensor, Tensor | None]]


def cross_entropy(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The default loss: cross-entropy of ``model(inputs)`` against the labels."""
    logits = model(batch[0])
    return nn.functional.cross_entropy(logits, batch[1]), logits


@dataclass
class MixedPrecision:
    """How a step computes: autocast to ``dtype`` (None: full precision), with ``scaler`` for
    float16 gradients, and channels-last inputs for convolutions on CUDA."""

    dtype: torch.dtype | None = None
    scaler: Any = None  # torch.amp.GradScaler for float16 on CUDA
    channels_last: bool = False

    @classmethod
    def choose(cls, device: torch.device, amp: bool, convolutional: bool) -> MixedPrecision:
        """bfloat16 autocast on the CPU; on CUDA bfloat16 where the GPU has it, else float16
        with a gradient scaler; channels-last for convolutional networks on CUDA."""
        cuda = device.type == "cuda"
        channels_last = cuda and convolutional
        if not amp:
            return cls(channels_last=channels_last)
        if cuda and not torch.cuda.is_bf16_supported():
            return cls(torch.float16, torch.amp.GradScaler("cuda"), channels_last)
        return cls(torch.bfloat16, None, channels_last)

    def autocast(self, device: torch.device) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def inputs(self, x: Tensor, device: torch.device) -> Tensor:
        if self.channels_last and x.dim() == 4:
            return x.to(device, non_blocking=True, memory_format=torch.channels_last)
        return x.to(device, non_blocking=True)


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                device: torch.device | str = "cpu", loss_fn: LossFn = cross_entropy,
                after_step: Callable[[], None] | None = None, world: World | None = None,
                progress: Progress | None = None,
                precision: MixedPrecision | None = None) -> tuple[float, float]:
    """One pass over ``loader``: forward, loss, backward, step, then ``after_step()``.

    The model stays in the mode the caller set; ``precision`` sets autocast and the gradient
    scaler (default: full precision). Returns the mean loss and the training accuracy (NaN
    when ``loss_fn`` gives no logits). A NaN or infinite loss is a TaskError, agreed on by
    every rank (a rank raising alone would leave the others in a collective).
    """
    progress, device = progress or Progress(), torch.device(device)
    precision = precision or MixedPrecision()
    total_loss, correct, seen, counted = 0.0, 0, 0, True
    for i, batch in enumerate(batches(loader, world, device), start=1):
        batch = [precision.inputs(t, device) for t in batch]
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            loss, logits = loss_fn(model, batch)
        if precision.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        if after_step is not None:
            after_step()
        size = batch[1].numel()
        total_loss += float(loss.detach()) * size
        if logits is None:
            counted = False
        else:
            correct += int((logits.detach().float().argmax(1) == batch[1]).sum())
        seen += size
        progress.batch_end(i, total_loss / seen, correct / seen)
    if not all_ok(world, math.isfinite(total_loss), device):
        raise TaskError("training diverged: the loss became NaN or infinite; lower the "
                        "learning rate (`lr`, `finetune_lr`)")
    return total_loss / max(seen, 1), correct / max(seen, 1) if counted else math.nan


def make_optimizer(params: Iterable[Tensor], config: TrainConfig,
                   lr: float) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, at ``lr``, with its momentum and weight decay."""
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, decay_every: int) -> Any:
    """``lr x 0.1`` every ``decay_every`` epochs, or ``None`` for a constant rate (0)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, decay_every, 0.1) if decay_every else None


@dataclass
class BestEpoch:
    """The best validation score seen so far and the model state that reached it."""

    score: Measurement | None = None
    state: dict[str, Tensor] | None = None
    current: bool = False  # the last offer was kept: ``state`` is the model as it is now

    def offer(self, score: Measurement, model: nn.Module) -> bool:
        """Keep ``model``'s state if ``score`` is better (:meth:`Measurement.better_than`)."""
        self.current = score.better_than(self.score)
        if self.current:
            self.score, self.state = score, snapshot(model)
        return self.current

    def take(self, score: Measurement, model: nn.Module) -> bool:
        """Keep ``model``'s state whatever ``score`` is."""
        self.current, self.score, self.state = True, score, snapshot(model)
        return True

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


@dataclass
class RngState:
    """The random state training draws from: the global CPU generator, the training loader's
    generator and, on CUDA, the device's generator."""

    cpu: Tensor
    loader: Tensor
    cuda: Tensor | None = None

    @classmethod
    def capture(cls, generator: torch.Generator, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), generator.get_state(), cuda)

    def restore(self, generator: torch.Generator, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        generator.set_state(self.loader)
        if self.cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda, device)

    def to_dict(self) -> dict[str, Tensor | None]:
        return {"cpu": self.cpu, "loader": self.loader, "cuda": self.cuda}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RngState:
        return cls(d["cpu"], d["loader"], d.get("cuda"))


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state_dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class FrozenWeightGuard:
    """Keeps the non-trainable entries of masked weights bit-identical across optimizer steps.

    Call :meth:`restore` after every ``optimizer.step()``. It computes
    ``frozen_values + w * trainable`` in place, in one fused pass (``addcmul``): exact for both
    kinds of entry (``0 + x * 1`` and ``v + x * 0``) whatever finite values the optimizer wrote
    (weight decay, momentum, Adam moments). Training stops before non-finite values could
    matter: a NaN or infinite loss is an error (:func:`train_epoch`).

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
