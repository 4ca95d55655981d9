"""A training epoch's order and randomness (packtool.data.sampling, issue 24)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from packtool.data import EpochSampler, SeededSamples
from packtool.data.sampling import sample_seed


class RandomItems(Dataset):
    """Item i is (i, a draw from torch's global generator), as a random crop would draw."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int):
        return torch.tensor(i), torch.rand(())


def _loader(dataset: Dataset, generator: torch.Generator, workers: int,
            persistent: bool = False) -> DataLoader:
    extra = {"persistent_workers": persistent} if workers else {}
    return DataLoader(SeededSamples(dataset), batch_size=4,
                      sampler=EpochSampler(dataset, generator), generator=torch.Generator(),
                      num_workers=workers, **extra)


def _epochs(loader: DataLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(n):
        batches = list(loader)
        out.append((torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])))
    return out


def test_the_order_is_the_plain_shuffled_loaders():
    """With no workers, the order is what DataLoader(shuffle=True, generator=g) gives: the same
    draws, so packs trained by earlier versions train the same today."""
    data = TensorDataset(torch.arange(50))
    plain = DataLoader(data, batch_size=8, shuffle=True,
                       generator=torch.Generator().manual_seed(5))
    ours = DataLoader(SeededSamples(data), batch_size=8, generator=torch.Generator(),
                      sampler=EpochSampler(data, torch.Generator().manual_seed(5)))
    for _ in range(3):
        assert [b[0].tolist() for b in plain] == [b[0].tolist() for b in ours]


def test_epochs_depend_on_neither_workers_nor_their_persistence():
    reference = _epochs(_loader(RandomItems(), torch.Generator().manual_seed(1), 0), 3)
    for workers, persistent in ((1, True), (2, False), (2, True)):
        got = _epochs(_loader(RandomItems(), torch.Generator().manual_seed(1), workers,
                              persistent), 3)
        for (ri, rx), (gi, gx) in zip(reference, got):
            assert torch.equal(ri, gi) and torch.equal(rx, gx)
    assert not torch.equal(reference[0][1], reference[1][1])  # each epoch draws anew


def test_an_epoch_resumed_from_the_generator_state_is_the_same():
    """What a checkpoint saves (the generator's state) is all the next epoch depends on, with
    persistent workers that already served earlier epochs or with fresh ones."""
    generator = torch.Generator().manual_seed(2)
    loader = _loader(RandomItems(), generator, 2, persistent=True)
    _epochs(loader, 2)
    saved = generator.get_state()
    third = _epochs(loader, 1)[0]
    resumed = torch.Generator()
    resumed.set_state(saved)
    again = _epochs(_loader(RandomItems(), resumed, 2, persistent=True), 1)[0]
    assert torch.equal(third[0], again[0]) and torch.equal(third[1], again[1])


def test_reading_leaves_the_global_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _epochs(_loader(RandomItems(), torch.Generator().manual_seed(1), 0), 2)
    assert torch.equal(torch.rand(3), expected)


def test_an_item_depends_on_its_key_alone():
    seeded = SeededSamples(RandomItems())
    first = seeded[(4, 123)][1]
    seeded[(5, 99)]
    torch.rand(10)
    assert torch.equal(seeded[(4, 123)][1], first)
    assert not torch.equal(seeded[(4, 124)][1], first)


def test_sample_seeds_are_spread():
    seeds = {sample_seed(e, i) for e in range(20) for i in range(500)}
    assert len(seeds) == 20 * 500
    assert all(0 <= s < 2**63 for s in seeds)
