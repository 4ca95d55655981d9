"""The order and the randomness of a training epoch, the same under every data-loading setting.

An epoch draws from one generator, the training's own (a checkpoint saves its state):

1. one int64, the epoch's seed;
2. the order of the samples: a permutation (:class:`~torch.utils.data.RandomSampler`'s draws)
   or, under torchrun, the rank's shard (:class:`~torch.utils.data.DistributedSampler`, which
   shuffles by epoch and draws nothing).

Sample ``i`` of the epoch is then read with torch's global CPU generator seeded to
:func:`sample_seed` ``(epoch seed, i)``, in whichever process reads it, and put back as it was
afterwards. A random crop or flip therefore depends on neither the number of loader workers,
nor whether they persist across epochs, nor the epoch a run was resumed at; and reading data
never moves the random stream the training itself draws from (dropout, initialization).

The draws are those a plain ``DataLoader(dataset, shuffle=True, generator=g)`` makes in the
training process (its base seed, then the permutation), so with ``workers=0`` the order is the
one earlier versions of packtool trained in.

Invariants (tested): for a given generator state, :class:`EpochSampler` yields the same pairs
whatever reads them; ``SeededSamples(d)[(i, s)]`` is a function of ``(i, s)`` alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, Sampler

_MASK64 = (1 << 64) - 1


def sample_seed(epoch_seed: int, index: int) -> int:
    """The seed of dataset item ``index`` in the epoch seeded ``epoch_seed``: SplitMix64 of
    the pair, so nearby indices and epochs give unrelated streams. In ``0 .. 2**63 - 1``."""
    z = (epoch_seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, seed)`` for every sample of an epoch: see the module docstring.

    Args:
        data: the dataset (its length).
        generator: the training's generator; each epoch draws its seed and order from it.
        shard: under torchrun, the rank's :class:`DistributedSampler` (its ``set_epoch`` is the
            caller's); ``None`` shuffles the whole dataset.
    """

    def __init__(self, data: Sized, generator: torch.Generator,
                 shard: DistributedSampler | None = None) -> None:
        self.generator = generator
        self.order: Sampler[int] = shard if shard is not None else RandomSampler(
            data, generator=generator)

    def __len__(self) -> int:
        return len(self.order)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        for index in self.order:
            yield index, sample_seed(epoch_seed, index)


class SeededSamples(Dataset):
    """``dataset`` read by ``(index, seed)`` keys: item ``index`` drawn with torch's global CPU
    generator seeded to ``seed``, which is restored afterwards (only the CPU generator: a CUDA
    stream is never touched)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)
