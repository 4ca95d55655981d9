"""Multi-process add-task on ``torch.distributed`` (DistributedDataParallel under torchrun).

packtool uses PyTorch's own engine: :func:`init_from_env` joins the process group that
``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU); :func:`packtool.training.
add_task` notices an initialized process group and then

* wraps the live network in ``DistributedDataParallel`` after the PackNet reparametrization
  (the masks are buffers, so DDP broadcasts them with the other buffers),
* shards training data with a ``DistributedSampler`` and evaluation data without padding, and
  sums correct counts across ranks, so every rank sees the same accuracies,
* broadcasts rank 0's state after every epoch and after pruning, so norm statistics, owners and
  weights are identical on every rank (checked by digest before the task is committed),
* agrees on failure at every step: a rank that cannot read its batch makes every rank stop with
  an error instead of hanging in a collective.

Only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from .errors import DataError, PackToolError, one_line
from .formats.digest import digest


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> World | None:
    """The process group this process is in, or ``None`` when running alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return World(dist.get_rank(), dist.get_world_size(), local)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto", timeout_seconds: int = 1800) -> World | None:
    """Join the process group described by torchrun's environment variables.

    Returns ``None`` when not launched with more than one process. NCCL when this rank will
    train on CUDA, else gloo. Each CUDA rank uses ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return None
    if not dist.is_available():
        raise PackToolError("this PyTorch build has no torch.distributed support")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=timedelta(seconds=timeout_seconds))
    return current()


def rank_device(world: World | None, device: torch.device) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA runs."""
    if world is not None and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def all_ok(world: World | None, ok: bool, device: torch.device) -> bool:
    """True on every rank when ``ok`` holds on every rank (one tiny all-reduce)."""
    if world is None:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device)
    dist.all_reduce(flag)
    return int(flag) == 0


def sum_counts(world: World | None, values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum of integer counts over ranks."""
    return [int(v) for v in _summed(world, values, torch.int64, device)]


def sum_floats(world: World | None, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of floats over ranks, in float64; the same result on every rank."""
    return [float(v) for v in _summed(world, values, torch.float64, device)]


def _summed(world: World | None, values: list, dtype: torch.dtype, device: torch.device) -> list:
    if world is None:
        return values
    t = torch.tensor(values, dtype=dtype, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def broadcast_state(world: World | None, tensors: list[Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values (in place)."""
    if world is None:
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def check_same_everywhere(world: World | None, tensors: dict[str, Tensor],
                          device: torch.device) -> None:
    """Raise unless every rank holds bit-identical ``tensors`` (compares SHA-256 digests)."""
    if world is None:
        return
    mine = torch.tensor(list(bytes.fromhex(digest(tensors))), dtype=torch.uint8, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(gathered, mine)
    differing = [r for r, d in enumerate(gathered) if not torch.equal(d, gathered[0])]
    if differing:
        raise PackToolError(f"ranks {differing} disagree with rank 0 on the trained weights")


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
        if not all_ok(world, error is None, device or torch.device("cpu")):
            raise error or PackToolError("another process failed to read its data; see its error")
        if item is _END:
            return
        yield item
