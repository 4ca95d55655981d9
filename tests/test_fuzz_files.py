"""Property-based: hostile file contents give one clear error, never a crash (issue 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packtool import Pack, PackFormatError, PackToolError, TrainConfig, add_task
from packtool.exporters import archive_bytes, archive_from_bytes, export_onnx_bytes, predict
from packtool.formats import model_file
from packtool.formats.checkpoint import Checkpoint

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small_pack() -> Pack:
    from conftest import synthetic_task

    pack = Pack.create("mlp", (1, 4, 4), kwargs={"hidden": 8})
    pack, _ = add_task(pack, "t1", synthetic_task(2, 0, shape=(1, 4, 4), n=24), 0.5,
                  TrainConfig(epochs=1, finetune_epochs=0, device="cpu"))
    return pack


@pytest.fixture(scope="module")
def valid_bytes(small_pack) -> bytes:
    return model_file.to_bytes(small_pack)


def _mutate(content: bytearray, data) -> bytes:
    """Truncate, or XOR one to four bytes with non-zero values."""
    if data.draw(st.sampled_from(["flip", "truncate"])) == "truncate":
        return bytes(content[: data.draw(st.integers(0, len(content) - 1))])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(content) - 1))
        content[i] ^= data.draw(st.integers(1, 255))
    return bytes(content)


def _load_error(path) -> str:
    with pytest.raises(PackFormatError) as info:
        Pack.load(path)
    return str(info.value)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    assert "\n" not in _load_error(path)


@SETTINGS
@given(st.data())
def test_mutated_valid_file(tmp_path, valid_bytes, data):
    path = tmp_path / "model.pt"
    path.write_bytes(_mutate(bytearray(valid_bytes), data))
    try:
        loaded = Pack.load(path)
    except PackFormatError as exc:
        assert "\n" not in str(exc)
    else:  # a flip in zip padding or metadata torch ignores: the digest vouches for the content
        assert model_file.to_bytes(loaded) == valid_bytes


@SETTINGS
@given(st.binary(max_size=1024))
def test_random_checkpoint_bytes(tmp_path, data):
    path = tmp_path / "model.pt.add-task.ckpt"
    path.write_bytes(data)
    with pytest.raises(PackFormatError):
        Checkpoint.load(path)


# -- archives and ONNX files, the inputs of predict, eval and info ------------------------------


@pytest.fixture(scope="module")
def archive(small_pack) -> bytes:
    return archive_bytes(small_pack)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_archive_bytes(data):
    with pytest.raises(PackFormatError) as info:
        archive_from_bytes(data)
    assert "\n" not in str(info.value)


@SETTINGS
@given(st.data())
def test_mutated_archive(archive, data):
    try:
        restored = archive_from_bytes(_mutate(bytearray(archive), data))
    except PackFormatError as exc:
        assert "\n" not in str(exc)
    else:  # e.g. a space of the header's padding turned into a tab: same content, checksum ok
        # (Compared as packs: safetensors writes metadata keys in a random order.)
        assert model_file.to_bytes(restored) == model_file.to_bytes(archive_from_bytes(archive))


@pytest.fixture(scope="module")
def onnx_file(small_pack, tmp_path_factory) -> tuple[bytes, Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("onnx")
    Image.new("L", (4, 4), 200).save(folder / "image.png")
    return export_onnx_bytes(small_pack, "t1", verify=False)[0], folder / "image.png"


@SETTINGS
@given(st.data())
def test_truncated_or_random_onnx_to_predict(tmp_path, onnx_file, data):
    model, image = onnx_file
    content = data.draw(st.one_of(
        st.integers(0, len(model) - 1).map(lambda cut: model[:cut]),
        st.binary(max_size=512),
    ))
    path = tmp_path / "task.onnx"
    path.write_bytes(content)
    try:
        result = predict(path, [image])
    except PackToolError as exc:
        assert "\n" not in str(exc)
    else:  # only the optional trailing metadata (version, source hash) was cut off
        assert result.task == "t1" and len(result.predictions) == 1
