"""The state one add-task works on (:class:`Training`): the live PackNet-masked network, its
data, settings and checkpoints. :mod:`packtool.lifecycle` runs the steps on it."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import distributed
from .config import TrainConfig, cache_budget, loader_settings
from .data import EpochSampler, SeededSamples, TaskData, TaskSplit, cache_splits, in_memory
from .distributed import World
from .evaluation import Measurement, eval_loader, evaluate
from .formats.checkpoint import Checkpoint
from .loop import BestEpoch, MixedPrecision, RngState, snapshot
from .method import Phase, select_all, tensor_at
from .models import Anatomy, new_head
from .pack import Pack
from .progress import Progress

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class Training:
    """What every step of one add-task works on: the live network, its data and settings."""

    pack: Pack
    task: int
    data: TaskData
    config: TrainConfig
    device: torch.device
    world: World | None
    progress: Progress
    anatomy: Anatomy
    net: nn.Module  # PackNet-masked; ``model`` is the same network, wrapped in DDP if any
    model: nn.Module
    packed: dict[str, tuple[nn.Module, str]]  # prunable weight key -> (module, tensor name)
    private_frozen: bool  # the paper's policy after task 1: biases and norms stay task 1's
    loader: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator
    checkpoint: str | os.PathLike | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # an auto search under way (saved in checkpoints)
    released: dict[str, Tensor] | None = None  # trained values of what the prune released
    checkpoint_every: float = 0.0  # seconds between checkpoints (0: after every epoch)
    grown: dict[str, Any] | None = None  # grow="auto"'s decision (saved in checkpoints)
    keep_last: bool = False  # a refit: every phase keeps its last epoch, not its best
    last_saved: float = field(default_factory=time.monotonic)
    precision: MixedPrecision = field(default_factory=MixedPrecision)
    loaders: dict[int, DataLoader] = field(default_factory=dict)  # evaluation, by dataset

    def evaluate(self, dataset: Dataset) -> Measurement:
        """``dataset`` scored by the live network in eval mode (every rank agrees), read by a
        loader kept for the whole add-task (its workers persist)."""
        loader = self.loaders.get(id(dataset))
        if loader is None:
            settings = loader_settings(self.config.workers, dataset, self.device,
                                       in_memory(dataset))
            loader = self.loaders[id(dataset)] = eval_loader(
                dataset, batch_size=max(self.config.batch_size, 256), world=self.world,
                **settings)
        return evaluate(self.net, dataset, device=self.device, world=self.world, loader=loader)

    def load(self, state: dict[str, Tensor], phase: Phase) -> None:
        """Load a state of the live network and put ``phase``'s masks in force (always both: the
        masks' cached all-ones flags follow the owners, not the loaded mask buffers)."""
        self.net.load_state_dict(state)
        select_all(self.net, self.task, phase)

    def head_and_private(self) -> list[Tensor]:
        """The head's parameters and, unless frozen, the task's private ones (set trainable)."""
        private = set(self.anatomy.private)
        params = [p for n, p in self.net.named_parameters() if n in private]
        for p in params:
            p.requires_grad_(not self.private_frozen)
        head = list(self.net.get_submodule(self.anatomy.classifier).parameters())
        return head + ([] if self.private_frozen else params)

    def train_mode(self) -> None:
        """Train mode, with norm layers kept in eval mode when the task may not change them."""
        self.net.train()
        if self.private_frozen:  # running statistics would otherwise keep updating
            for module in self.net.modules():
                if isinstance(module, NORM_TYPES):
                    module.eval()

    def sync(self) -> None:
        """Make every rank hold rank 0's state (norm statistics drift with local batches)."""
        distributed.broadcast_state(self.world, list(self.net.state_dict().values()))

    def save(self, phase: Phase, epoch: int, optimizer: torch.optim.Optimizer,
             scheduler: Any, best: BestEpoch) -> None:
        """Checkpoint the end of ``epoch`` (nothing without a checkpoint path, or before
        ``checkpoint_every`` seconds passed since the last one: resuming then repeats more)."""
        if self.checkpoint is None or (
                time.monotonic() - self.last_saved < self.checkpoint_every):
            return
        self.last_saved = time.monotonic()
        self.checkpoint_of(phase, epoch, optimizer, scheduler, best).save(self.checkpoint)

    def checkpoint_of(self, phase: Phase, epoch: int, optimizer: torch.optim.Optimizer,
                      scheduler: Any, best: BestEpoch, *, keep: bool = False) -> Checkpoint:
        """The end of ``epoch`` as a checkpoint. With ``keep``, one held in memory while
        training goes on (the network and optimizer state copied; no search inside it)."""
        rng = RngState.capture(self.generator, self.device)
        optimizer_state = optimizer.state_dict()
        return Checkpoint(
            identity=self.identity, phase=phase.value, epoch=epoch,
            net=snapshot(self.net) if keep else self.net.state_dict(),
            optimizer=copy.deepcopy(optimizer_state) if keep else optimizer_state,
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            best_val=best.score.accuracy if best.score else -1.0,
            best_val_loss=best.score.loss if best.score else math.inf,
            best_state=best.state, best_is_net=best.current, metrics=dict(self.metrics),
            rng=rng.cpu, loader_rng=rng.loader, cuda_rng=rng.cuda,
            search=None if keep else self.search, released=self.released,
            scaler=None if self.precision.scaler is None else self.precision.scaler.state_dict(),
            grown=self.grown,
        )

    def restore(self, start: Checkpoint, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> None:
        """Continue from checkpoint ``start``: optimizer, schedule and random state."""
        if start.optimizer is not None:
            optimizer.load_state_dict(start.optimizer)
        if scheduler is not None and start.scheduler is not None:
            scheduler.load_state_dict(start.scheduler)
        RngState(start.rng, start.loader_rng, start.cuda_rng).restore(self.generator, self.device)
        if self.precision.scaler is not None and start.scaler is not None:
            self.precision.scaler.load_state_dict(start.scaler)


def prepare(pack: Pack, task: int, data: TaskData, config: TrainConfig, device: torch.device,
            world: World | None, progress: Progress) -> Training:
    """The live network of task ``task`` (PackNet-masked for training), its loader and, under
    torchrun, its DDP wrapper and sampler."""
    anat = pack.anatomy()
    head, private = _initial_state(pack, anat, len(data.classes))
    net = pack.network(task, Phase.TRAIN, head=head, private=private, device=device)
    packed = {key: tensor_at(net, key) for key in anat.prunable}
    if pack.tasks:  # its free weights were released by earlier tasks; a first task's are initial
        _start_free_weights(pack, packed, seed=config.seed + task)
    _cache(data, config, progress)
    generator = torch.Generator().manual_seed(config.seed)
    sampler = None
    if world is not None:  # each rank trains on its shard; the batch size is per process
        sampler = DistributedSampler(data.train, world.size, world.rank, shuffle=True,
                                     seed=config.seed)
    # Every draw of an epoch comes from `generator` (see packtool.data.sampling); the loader's
    # own generator only seeds its worker processes, whose global streams nothing reads.
    loader = DataLoader(SeededSamples(data.train), batch_size=config.batch_size,
                        sampler=EpochSampler(data.train, generator, sampler),
                        generator=torch.Generator(),
                        **loader_settings(config.workers, data.train, device,
                                          in_memory(data.train)))
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())
    precision = MixedPrecision.choose(device, config.amp, convolutional)
    if precision.channels_last:
        net.to(memory_format=torch.channels_last)
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        # Fixed input sizes: let cuDNN time its kernels and keep the fastest. Its choice may
        # differ between runs, so not when the caller asked for deterministic algorithms.
        torch.backends.cudnn.benchmark = True
    model = net
    if world is not None:  # after the reparametrization: masks and owners are buffers it syncs
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                        else None)
    return Training(pack, task, data, config, device, world, progress, anat, net, model,
                   packed, pack.policy == "frozen" and task > 1, loader, sampler, generator,
                   precision=precision)


@torch.no_grad()
def _start_free_weights(pack: Pack, packed: dict[str, tuple[nn.Module, str]], seed: int
                        ) -> None:
    """Set the free weights a new task trains as ``pack.free_init`` says (zero: as they are).

    ``reinit`` draws the network's own initialization from a generator seeded with ``seed``
    (the task's seed and index), apart from the training's random stream.
    """
    if pack.free_init == "zero":
        return
    if pack.free_init == "reinit":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = dict(pack.build(pack.widths).named_parameters())
    for key, (module, name) in packed.items():
        weight = module.get_parameter(name + "_orig")
        free = module.get_buffer(name + "_owners") == 0
        if pack.free_init == "reinit":
            values = fresh[key].detach().to(weight.device)[free]
        elif key in pack.released:  # kept (none after an archive, which keeps no free values)
            values = pack.released[key].to(weight.device)
        else:
            continue
        weight.masked_scatter_(free, values.to(weight.dtype))


def _initial_state(pack: Pack, anat: Anatomy, classes: int
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The new task's head and private state: the pretrained classifier for a first task of
    the same size, else a new head; the last task's private state (the initial one first)."""
    previous = pack.tasks[-1] if pack.tasks else None
    private = pack.private_state(previous) if previous else pack.initial_private
    pretrained = pack.pretrained_head
    if not pack.tasks and pretrained and pretrained["weight"].shape[0] == classes:
        return dict(pretrained), dict(private)
    head = new_head(anat, classes).to(pack.device)
    return {k: v.detach().clone() for k, v in head.state_dict().items()}, dict(private)


def _cache(data: TaskData, config: TrainConfig, progress: Progress) -> None:
    """Decode the task's images once, if they fit the budget, and say what was cached."""
    budget = cache_budget(config.cache)
    splits = [data.train, data.val, data.test]
    if not budget or not any(isinstance(s, TaskSplit) and s.cached is None for s in splits):
        return
    cached = cache_splits(splits, budget)
    images = sum(len(s) for s in splits)
    if cached:
        progress.message(f"cached {images:,} decoded images in memory ({cached / 1e6:,.1f} MB)")
    else:
        progress.message(f"images not cached: they need more than the cache budget "
                         f"({budget / 1e9:.1f} GB, `cache`); decoded on every epoch")
