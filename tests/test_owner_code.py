"""Archive format 4: the owner index entropy-coded (issue 16)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_pack

from packtool import PackFormatError
from packtool.exporters import archive_bytes, archive_from_bytes, owner_bits
from packtool.formats.owner_code import decode_owners, encode_owners


def _owners(tasks: int, n: int, seed: int) -> torch.Tensor:
    """A PackNet-like owner index: task k owns half of what was free, the rest stays free."""
    g = torch.Generator().manual_seed(seed)
    shares = torch.tensor([0.5 ** (k + 1) for k in range(tasks)] + [0.5 ** tasks])
    drawn = torch.multinomial(shares, n, replacement=True, generator=g)  # 0..tasks
    return ((drawn + 1) % (tasks + 1)).to(torch.uint8)  # position tasks -> owner 0 (free)


@pytest.mark.parametrize("tasks", [1, 2, 5, 40])
def test_owner_stream_round_trips_bit_exactly_near_its_entropy(tasks):
    owners = _owners(tasks, 200_000, seed=tasks).reshape(400, 500)
    words, counts = encode_owners(owners, tasks + 1)
    assert words.dtype == torch.int32 and counts.tolist() == torch.bincount(
        owners.flatten().long(), minlength=tasks + 1).tolist()
    decoded = decode_owners(words, counts, owners.numel())
    assert torch.equal(decoded.reshape(owners.shape), owners)
    p = counts[counts > 0].double() / owners.numel()
    entropy_bits = float(-(p * p.log2()).sum()) * owners.numel()
    assert words.numel() * 32 <= 1.01 * entropy_bits + 64
    assert words.numel() * 32 <= owners.numel() * owner_bits(tasks) + 64  # never worse


def test_degenerate_layers():
    same = torch.ones(1000, dtype=torch.uint8)  # one task owns the whole layer
    words, counts = encode_owners(same, 3)
    assert words.numel() <= 2 and torch.equal(decode_owners(words, counts, 1000), same)
    empty_words, empty_counts = encode_owners(torch.zeros(0, dtype=torch.uint8), 2)
    assert decode_owners(empty_words, empty_counts, 0).numel() == 0


def test_damaged_streams_are_refused():
    owners = _owners(3, 5000, seed=0)
    words, counts = encode_owners(owners, 4)
    with pytest.raises(ValueError, match="do not describe"):
        decode_owners(words, counts, 4999)
    with pytest.raises(ValueError, match="do not describe"):
        decode_owners(words, -counts, 5000)
    flipped = words.clone()
    flipped[len(flipped) // 2] ^= 0x00F0F000
    with pytest.raises(ValueError, match="does not decode"):
        decode_owners(flipped, counts, 5000)
    with pytest.raises(ValueError, match="does not decode"):
        decode_owners(words[: len(words) // 2], counts, 5000)


def test_archive_codes_owners_and_round_trips(tmp_path):
    pack = build_pack("mlp", (1, 8, 8), {"hidden": 64}, [(3, 0.5), (2, 0.5), (2, 0.0)])
    data = archive_bytes(pack)
    restored = archive_from_bytes(data)
    for key in pack.owners:
        assert torch.equal(restored.owners[key], pack.owners[key])
    from safetensors import safe_open
    from safetensors.torch import load as st_load

    path = tmp_path / "a.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta["format_version"] == "6" and meta["owner_coding"] == "ans"  # thresholds: 6
    tensors = st_load(data)
    key = next(iter(pack.owners))
    assert tensors[f"owners/{key}"].dtype == torch.int32
    packed_bytes = math.ceil(pack.owners[key].numel() * owner_bits(3) / 8)
    assert tensors[f"owners/{key}"].numel() * 4 < packed_bytes


def test_forged_owner_counts_are_a_clean_error():
    pack = build_pack("mlp", (1, 8, 8), {"hidden": 16}, [(2, 0.5), (2, 0.0)])
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from packtool.formats.archive import checksum

    data = archive_bytes(pack)
    tensors = st_load(data)
    key = next(iter(pack.owners))
    counts = tensors[f"owner_counts/{key}"].clone()
    counts[0] += 1
    counts[1] -= 1  # same total: the stream no longer decodes to these counts
    tensors[f"owner_counts/{key}"] = counts
    import os
    import tempfile

    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        with safe_open(path, "pt") as f:
            meta = dict(f.metadata())
    meta["checksum"] = checksum(tensors, meta)  # a forger recomputes the checksum
    with pytest.raises(PackFormatError, match="damaged"):
        archive_from_bytes(st_save(tensors, metadata=meta))
