"""Shared fixtures: small synthetic tasks that train in well under a second."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from packtool import Pack, Progress, TrainConfig, add_task


@dataclass
class SyntheticTask:
    """Duck-types :class:`packtool.data.TaskData` with separable random data."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    spec: dict = field(default_factory=dict)
    augment: bool = False


def synthetic_task(classes: int, seed: int, shape=(1, 8, 8), n: int = 96) -> SyntheticTask:
    """``n`` samples of ``classes`` classes: noise plus a class-specific pattern."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, *shape, generator=g)
    labels = torch.arange(n) % classes
    inputs = torch.randn(n, *shape, generator=g) * 0.5 + patterns[labels]
    cut1, cut2 = n * 2 // 3, n * 5 // 6
    return SyntheticTask(
        train=TensorDataset(inputs[:cut1], labels[:cut1]),
        val=TensorDataset(inputs[cut1:cut2], labels[cut1:cut2]),
        test=TensorDataset(inputs[cut2:], labels[cut2:]),
        classes=[f"c{i}" for i in range(classes)],
        spec={"data": f"synthetic-{seed}", "classes": None},
    )


@pytest.fixture
def make_task():
    return synthetic_task


#: One quick epoch of each phase: enough to give every task distinct weights.
PACK_CONFIG = TrainConfig(epochs=1, finetune_epochs=1, lr=0.01, device="cpu")


def build_pack(arch: str, size: tuple[int, int, int], kwargs: dict, tasks: list,
               policy: str = "per_task", n: int = 96, config: TrainConfig = PACK_CONFIG) -> Pack:
    """A pack of synthetic tasks ``task 1``, ``task 2``, ...; ``tasks`` is
    ``[(classes, prune), ...]`` and task ``i`` (from 0) draws its data with seed ``i``."""
    pack = Pack.create(arch, size, kwargs=kwargs, policy=policy)
    for i, (classes, prune) in enumerate(tasks):
        data = synthetic_task(classes, seed=i, shape=size, n=n)
        pack, _ = add_task(pack, f"task {i + 1}", data, prune, config)
    return pack


class StopAfter(Progress):
    """Progress that interrupts (as Ctrl-C would) at the end of the ``epochs``-th epoch."""

    def __init__(self, epochs: int) -> None:
        self.left = epochs

    def epoch_end(self, *args) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt
