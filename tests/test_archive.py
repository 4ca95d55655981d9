"""The shared-weight archive: bit packing, exact rebuild, corruption, size, half precision."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import PACK_CONFIG, build_pack, synthetic_task
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from packtool import Pack, TrainConfig, add_task, evaluate
from packtool.errors import PackFormatError, PackToolError
from packtool.exporters import (
    archive_bytes,
    half_precision_change,
    owner_bits,
    pack_bits,
    read_archive,
    unpack_bits,
    write_archive,
)
from packtool.formats import owner_code
from packtool.formats.archive import archive_from_bytes, archive_version
from packtool.records import stored_stats

PACKS = {  # name: (arch, input size, kwargs, [(classes, prune), ...], policy)
    "mlp": ("mlp", (1, 8, 8), {"hidden": 64}, [(3, 0.75), (4, 0.5), (2, 0.0)], "per_task"),
    "bn-conv": ("lenet", (1, 8, 8), {"width": 8}, [(3, 0.6), (5, 0.5)], "per_task"),
    "bn-conv-frozen": ("lenet", (1, 8, 8), {"width": 8}, [(3, 0.6), (5, 0.5)], "frozen"),
    "resnet": ("nets:tiny_resnet", (3, 16, 16), {}, [(4, 0.5), (3, 0.5)], "per_task"),
}


@pytest.fixture(scope="module", params=list(PACKS))
def pack(request) -> Pack:
    return build_pack(*PACKS[request.param])


@pytest.fixture(scope="module")
def mlp_pack() -> Pack:
    return build_pack(*PACKS["mlp"])


@pytest.fixture(scope="module")
def archive_file(mlp_pack, tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "pack.safetensors"
    write_archive(mlp_pack, path)
    return path


# ------------------------------------------------------------------------------------------------
# Owner bit packing
# ------------------------------------------------------------------------------------------------


def test_owner_bits():
    assert [owner_bits(t) for t in (1, 2, 3, 4, 7, 8, 255)] == [1, 2, 2, 3, 3, 4, 8]


def test_bit_order_is_lsb_first():
    assert pack_bits(torch.tensor([1, 0, 1, 1], dtype=torch.uint8), 1).tolist() == [0b1101]
    two_bits = pack_bits(torch.tensor([1, 2, 3], dtype=torch.uint8), 2)
    assert two_bits.tolist() == [1 | 2 << 2 | 3 << 4]
    value = 5 | 6 << 3 | 7 << 6  # three 3-bit owners spill into a second byte
    assert pack_bits(torch.tensor([5, 6, 7], dtype=torch.uint8), 3).tolist() == [value & 255,
                                                                                  value >> 8]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_pack_unpack_round_trip(bits, count):
    values = torch.randint(0, 2**bits, (count,), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(bits * 1000 + count))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, count), values)
    # The spec's NumPy recipe reads the same values.
    stream = np.unpackbits(packed.numpy(), bitorder="little")[: count * bits].reshape(count, bits)
    assert np.array_equal(stream @ (1 << np.arange(bits)), values.numpy())


def test_pack_bits_across_chunks(monkeypatch):
    monkeypatch.setattr(owner_code, "_CHUNK", 16)
    values = torch.randint(0, 8, (1000,), dtype=torch.uint8)
    assert torch.equal(unpack_bits(pack_bits(values, 3), 3, 1000), values)


# ------------------------------------------------------------------------------------------------
# Exact rebuild
# ------------------------------------------------------------------------------------------------


def test_archive_rebuilds_every_task_bit_identically(pack, tmp_path):
    info = write_archive(pack, tmp_path / "pack.safetensors", source_sha256="ef" * 32)
    assert info.bytes == info.path.stat().st_size
    restored = read_archive(info.path)
    pack.save(tmp_path / "model.pt")
    reloaded = Pack.load(tmp_path / "model.pt")

    assert restored.spec == pack.spec and restored.policy == pack.policy
    assert [t.meta() for t in restored.tasks] == [t.meta() for t in pack.tasks]
    for key in pack.shared:
        assert torch.equal(restored.owners[key], pack.owners[key])
        assert torch.equal(restored.shared[key], pack.shared[key])  # free weights are zero
    x = torch.randn(6, *pack.spec.input_size, generator=torch.Generator().manual_seed(0))
    for name in pack.task_names:
        with torch.no_grad():
            expected = pack.model_for(name)(x)
            assert torch.equal(restored.model_for(name)(x), expected)
            assert torch.equal(reloaded.model_for(name)(x), expected)
            state, original = restored.model_for(name).state_dict(), pack.model_for(name)
            for key, value in original.state_dict().items():
                assert torch.equal(state[key], value), key


def test_restored_pack_saves_and_keeps_adding_tasks(tmp_path):
    """Free weights are zero at rest, so an archive restores all add_task needs."""
    size = (1, 8, 8)
    built = build_pack("mlp", size, {"hidden": 32}, [(3, 0.5)])
    restored = read_archive(write_archive(built, tmp_path / "a.safetensors").path)
    restored.save(tmp_path / "restored.pt")
    restored = Pack.load(tmp_path / "restored.pt")
    # Compare with the original as loaded from model.pt, like the CLI would: an in-memory pack
    # caches its anatomy, and building it inside add_task consumes the seeded RNG.
    built.save(tmp_path / "original.pt")
    original = Pack.load(tmp_path / "original.pt")
    original, restored = (add_task(p, "next", synthetic_task(2, seed=7, shape=size), 0.5,
                                   PACK_CONFIG)[0] for p in (original, restored))
    for key in original.shared:
        assert torch.equal(restored.owners[key], original.owners[key])
        assert torch.equal(restored.shared[key], original.shared[key])
    x = torch.randn(4, *size)
    with torch.no_grad():
        assert torch.equal(restored.model_for("next")(x), original.model_for("next")(x))


def test_spec_rebuilds_a_task_with_plain_safetensors(mlp_pack, archive_file):
    """Follow the module docstring's recipe with safetensors, NumPy and constriction only."""
    import constriction

    with safe_open(str(archive_file), "np") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    assert meta["format"] == "packtool.archive" and meta["format_version"] == "6"
    assert meta["owner_coding"] == "ans"
    k = 2
    for key, shape in json.loads(meta["layers"]):
        n = math.prod(shape)
        counts = tensors[f"owner_counts/{key}"]
        model = constriction.stream.model.Categorical(counts / n, perfect=False)
        coder = constriction.stream.stack.AnsCoder(tensors[f"owners/{key}"].view(np.uint32))
        owners = coder.decode(model, n)
        w = np.zeros(n, np.float32)
        w[owners != 0] = tensors[f"shared/{key}"]
        w[owners > k] = 0
        expected = mlp_pack.model_for(k).state_dict()[key].numpy()
        assert np.array_equal(w.reshape(shape), expected)
    task = json.loads(meta["tasks"])[k - 1]
    head = mlp_pack.task(k).head
    assert task["name"] == "task 2" and task["classes"] == mlp_pack.task(k).classes
    assert np.array_equal(tensors[f"head/{k}/weight"], head["weight"].numpy())
    assert set(json.loads(meta["preprocessing"])) == {"input_size", "mean", "std"}


def test_archive_of_empty_pack_refused():
    with pytest.raises(PackToolError, match="no tasks"):
        archive_bytes(Pack.create("mlp", (1, 8, 8)))


# ------------------------------------------------------------------------------------------------
# Damaged and foreign files
# ------------------------------------------------------------------------------------------------


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _damaged(data: bytes) -> dict[str, bytes]:
    end = _header_end(data)
    flipped = bytearray(data)
    flipped[(end + len(data)) // 2] ^= 0x01  # one bit of one weight
    return {
        "empty": b"",
        "truncated header": data[: end // 2],
        "truncated payload": data[: (end + len(data)) // 2],
        "last byte missing": data[:-1],
        "flipped payload byte": bytes(flipped),
        "random bytes": os.urandom(4096),
        "random bytes with a brace": b"\x10\x00\x00\x00\x00\x00\x00\x00{" + os.urandom(64),
    }


def test_damaged_archives_raise_pack_format_error(archive_file, tmp_path):
    for what, data in _damaged(archive_file.read_bytes()).items():
        path = tmp_path / f"{what}.safetensors"
        path.write_bytes(data)
        with pytest.raises(PackFormatError) as info:
            read_archive(path)
        assert "\n" not in str(info.value), what
        assert str(path) in str(info.value), what


def test_flipped_byte_fails_the_checksum(archive_file, tmp_path):
    data = bytearray(archive_file.read_bytes())
    data[-5] ^= 0x80
    (tmp_path / "x").write_bytes(bytes(data))
    with pytest.raises(PackFormatError, match="checksum"):
        read_archive(tmp_path / "x")


def test_foreign_and_tampered_files(archive_file, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.randn(4, 4), "bias": torch.randn(4)}, str(foreign))
    with pytest.raises(PackFormatError, match="not a packtool archive"):
        read_archive(foreign)

    tensors = load_file(str(archive_file))
    with safe_open(str(archive_file), "pt") as f:
        meta = f.metadata()
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**meta, "format_version": "2"})
    with pytest.raises(PackFormatError, match="newer"):
        read_archive(newer)

    renamed = tmp_path / "renamed.safetensors"  # metadata edited, checksum not updated
    tasks = json.loads(meta["tasks"])
    tasks[0]["name"] = "renamed"
    save_file(tensors, str(renamed), metadata={**meta, "tasks": json.dumps(tasks)})
    with pytest.raises(PackFormatError, match="checksum"):
        read_archive(renamed)

    resaved = tmp_path / "resaved.safetensors"  # any safetensors writer keeps it valid
    save_file(dict(reversed(tensors.items())), str(resaved), metadata=meta)
    assert read_archive(resaved).task_names == ["task 1", "task 2", "task 3"]

    with pytest.raises(PackToolError, match="does not exist"):
        read_archive(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------------
# Size and half precision
# ------------------------------------------------------------------------------------------------


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_archive_is_within_five_percent_of_the_information_floor(tmp_path):
    # hidden=512: 294,912 prunable weights, so the safetensors header is negligible.
    pack = build_pack("mlp", (1, 8, 8), {"hidden": 512},
                      [(3, 0.75), (3, 0.75), (3, 0.75)], n=48)
    size = write_archive(pack, tmp_path / "pack.safetensors").bytes
    bits = owner_bits(len(pack.tasks))
    owned = sum(int((o != 0).sum()) for o in pack.owners.values())
    floor = (owned * 4 + math.ceil(pack.prunable_weights * bits / 8)
             + sum(_nbytes(t.head.values()) + _nbytes(t.private.values())
                   + _nbytes(stored_stats(t).values()) for t in pack.tasks))
    dense = _nbytes(pack.shared.values()) + _nbytes(pack.tasks[0].head.values()) + _nbytes(
        pack.tasks[0].private.values())
    print(f"\narchive {size} B, floor {floor} B ({size / floor:.4f}x floor), "
          f"one dense fp32 network {dense} B ({size / dense:.3f}x)")
    assert floor <= size <= 1.05 * floor
    stats = sum(_nbytes(t.feature_stats.values()) for t in pack.tasks)
    assert size / dense == pytest.approx(0.64 + stats / dense, abs=0.03)  # 57.8% owned + 2/32 bits


def test_half_precision_archive(tmp_path):
    size = (1, 8, 8)
    tasks = [(4, 0.5), (3, 0.5)]
    config = TrainConfig(epochs=4, finetune_epochs=2, lr=0.05, finetune_lr=0.01, device="cpu")
    pack = build_pack("lenet", size, {"width": 8}, tasks, n=192, config=config)
    full = write_archive(pack, tmp_path / "full.safetensors")
    half = write_archive(pack, tmp_path / "half.safetensors", half=True)
    restored = read_archive(half.path)
    with safe_open(str(half.path), "pt") as f:
        assert f.metadata()["float_dtype"] == "float16"
        assert f.get_slice("head/1/weight").get_dtype() == "F16"
    print(f"\nlenet archive: float32 {full.bytes} B, float16 {half.bytes} B "
          f"({half.bytes / full.bytes:.2f}x)")
    stats = sum(_nbytes(stored_stats(t).values()) for t in pack.tasks)  # float16 in both
    assert half.bytes - stats < 0.6 * (full.bytes - stats)
    for i, name in enumerate(pack.task_names):
        data = synthetic_task(tasks[i][0], seed=i, shape=size, n=192)
        before = evaluate(pack.model_for(name), data.test).accuracy
        after = evaluate(restored.model_for(name), data.test).accuracy
        x = torch.stack([x for x, _ in data.test])
        with torch.no_grad():
            ref, got = pack.model_for(name)(x), restored.model_for(name)(x)
        assert got.dtype == torch.float32
        diff = float((got - ref).abs().max())
        print(f"{name}: accuracy {before:.4f} -> {after:.4f}, max logit diff {diff:.2e}")
        assert abs(after - before) <= 0.05
        assert diff < 0.05 * float(ref.abs().max())
        assert float((got.argmax(1) != ref.argmax(1)).float().mean()) <= 0.05


def test_half_refuses_values_beyond_float16(mlp_pack):
    record = mlp_pack.tasks[0]
    saved = record.head["weight"].clone()
    try:
        record.head["weight"][0, 0] = 1e6
        with pytest.raises(PackToolError, match="float16"):
            archive_bytes(mlp_pack, half=True)
    finally:
        record.head["weight"].copy_(saved)


def test_half_precision_change_without_the_tasks_data(mlp_pack, tmp_path):
    """Synthetic tasks cannot be rebuilt from their spec: no accuracy, the logit gap only."""
    info = write_archive(mlp_pack, tmp_path / "half.safetensors", half=True)
    changes = half_precision_change(mlp_pack, read_archive(info.path))
    assert [c.task for c in changes] == mlp_pack.task_names
    for change in changes:
        assert (change.accuracy, change.accuracy_reduced, change.samples) == (None, None, 0)
        assert 0.0 < change.max_abs_diff < 0.05
    same = half_precision_change(mlp_pack, mlp_pack)  # float32 against itself: no change
    assert all(c.max_abs_diff == 0.0 for c in same)


def test_archives_are_written_in_the_oldest_format_that_holds_them(mlp_pack):
    """4: the owner coding; 5: a grown network's widths; 6: rejection thresholds. An archive
    without thresholds (a pack of an older packtool) keeps the older version and float32
    statistics."""
    assert archive_version(mlp_pack) == 6
    older = copy.deepcopy(mlp_pack)
    for record in older.tasks:
        del record.feature_stats["reject"]
    assert archive_version(older) == 4
    restored = archive_from_bytes(archive_bytes(older))
    assert all(t.feature_stats["basis"].dtype == torch.float32 and not t.rejects
               for t in restored.tasks)
    with_reject = archive_from_bytes(archive_bytes(mlp_pack))
    for ours, theirs in zip(with_reject.tasks, mlp_pack.tasks):
        for key, value in theirs.feature_stats.items():  # float16 values, read back exactly
            assert torch.equal(ours.feature_stats[key], value), key
