"""Tests for packtool.data: every loader reads a tiny fixture written here in its published layout.

Fixture images are small solid-colored JPEGs/PNGs. Where a dataset crops a bounding box, the box
region is painted in the class's color on a gray background, so "the crop is right" and "the
label is right" are both checked by the color of the output.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from packtool.data import (
    DATASETS,
    IMAGE_EXTENSIONS,
    ImageTransform,
    Preprocess,
    TaskData,
    dataset_root,
    image_files,
    load_task_data,
)
from packtool.errors import DataError, PackToolError
from packtool.parse import parse_classes

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # class k is painted COLORS[k]
GRAY = (128, 128, 128)
RGB32 = Preprocess((3, 32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # output = pixel / 255


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def write_image(path, color, size=(24, 20), box=None, background=GRAY):
    """An RGB image of ``size`` (w, h): all ``color``, or ``background`` with ``box`` in color."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, background if box else color)
    if box:
        image.paste(color, tuple(int(v) for v in box))
    image.save(path, quality=95)
    return path


def dominant(x: torch.Tensor) -> int:
    """Index of the color in COLORS whose channel dominates the image ``[3, H, W]``."""
    return int(x.mean(dim=(1, 2)).argmax())


def check_colors(split):
    """Every item of ``split`` is painted in the color of its label (and 32x32 float32)."""
    for i in range(len(split)):
        x, y = split[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert isinstance(y, int)
        assert dominant(x) == y


def check_box_crops(data):
    """Every split is painted as its label, and cropped to the painted box: the class
    channel ~1, the others ~0 (the background would pull them apart)."""
    for split in (data.train, data.val, data.test):
        check_colors(split)
        for i in range(len(split)):
            x, y = split[i]
            means = x.mean(dim=(1, 2))
            assert means[y] > 0.9 and means.sum() - means[y] < 0.15


def write_folder(base, splits=("train", "test"), per_class=3, classes=("a_red", "b_green")):
    """An image folder ``base/<split>/<class>/*.jpg``, class k painted COLORS[k]."""
    for split in splits:
        for k, name in enumerate(classes):
            for i in range(per_class):
                write_image(base / split / name / f"{i}.jpg", COLORS[k])
    return base


def labels_of(split) -> list[int]:
    return [int(v) for v in split.labels]


# ----------------------------------------------------------------------------------------------
# parse_classes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0,1", [0, 1]),
        ("0-4", [0, 1, 2, 3, 4]),
        ("0-2,7", [0, 1, 2, 7]),
        ("7,0-2", [7, 0, 1, 2]),  # given order kept
        (" 3 , 1 ", [3, 1]),
        ("5-5", [5]),
        ("12", [12]),
        ("circle,hexagon", ["circle", "hexagon"]),  # names, resolved by the dataset
        ("hexagon, 0-1", ["hexagon", 0, 1]),
        ("1.5", ["1.5"]),
    ],
)
def test_parse_classes_good(text, expected):
    assert parse_classes(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty class item"),
        ("1,,2", "empty class item"),
        ("a,a", "twice"),
        ("-1", "negative"),
        ("0,-3", "negative"),
        ("3-1", "backwards"),
        ("1,1", "twice"),
        ("0-2,1", "twice"),
        ("0-99999999999", "more than"),
    ],
)
def test_parse_classes_bad(text, words):
    with pytest.raises(DataError, match=words) as info:
        parse_classes(text)
    assert "\n" not in str(info.value)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), unique=True, min_size=1, max_size=20))
def test_parse_classes_round_trips_lists(indices):
    assert parse_classes(",".join(map(str, indices))) == indices


# ----------------------------------------------------------------------------------------------
# Preprocess / transforms
# ----------------------------------------------------------------------------------------------


def test_transform_normalizes_resizes_and_returns_float32():
    pre = Preprocess((3, 16, 12), (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = ImageTransform(pre)(Image.new("RGB", (40, 30), (255, 0, 102)))
    assert x.shape == (3, 16, 12) and x.dtype == torch.float32
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, 0.4 / 2.0])
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)


def test_gray_to_rgb_and_rgb_to_gray():
    rgb = ImageTransform(Preprocess((3, 8, 8), (0, 0, 0), (1, 1, 1)))
    gray = ImageTransform(Preprocess((1, 8, 8), (0,), (1,)))
    x = rgb(Image.new("L", (8, 8), 51))
    assert x.shape == (3, 8, 8)
    torch.testing.assert_close(x, torch.full((3, 8, 8), 0.2))
    y = gray(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert y.shape == (1, 8, 8)
    torch.testing.assert_close(y, torch.full((1, 8, 8), 0.299))  # ITU-R 601-2 luma, as PIL
    # A gray 0..1 tensor becomes RGB too; an RGB tensor becomes gray.
    assert rgb(torch.full((1, 4, 4), 0.5)).shape == (3, 8, 8)
    torch.testing.assert_close(gray(torch.ones(3, 8, 8)), torch.ones(1, 8, 8))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "1", "I;16"])
def test_other_pil_modes_are_converted(mode):
    image = Image.new(mode, (10, 10))
    for channels in (1, 3):
        pre = Preprocess((channels, 6, 6), (0.0,) * channels, (1.0,) * channels)
        x = ImageTransform(pre)(image)
        assert x.shape == (channels, 6, 6) and torch.isfinite(x).all()


def test_alpha_is_dropped_and_16_bit_scaled():
    pre = Preprocess((3, 4, 4), (0, 0, 0), (1, 1, 1))
    x = ImageTransform(pre)(Image.new("RGBA", (4, 4), (0, 255, 0, 0)))
    torch.testing.assert_close(x, torch.stack([torch.zeros(4, 4), torch.ones(4, 4),
                                               torch.zeros(4, 4)]))
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    torch.testing.assert_close(ImageTransform(pre)(sixteen), torch.ones(3, 4, 4))


def test_pil_and_tensor_inputs_agree():
    """8-bit images are resized as uint8 (the ONNX contract), floats in float: a PIL image and
    its uint8 tensor agree exactly, its 0..1 float tensor within the uint8 rounding."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    t = ImageTransform(Preprocess((3, 11, 13), (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)))
    from_pil = t(Image.fromarray(array))
    uint8 = torch.from_numpy(array).permute(2, 0, 1)
    assert torch.equal(from_pil, t(uint8))
    # (within a step of 8 bits: the uint8 kernel rounds in fixed point; std 0.2 scales it)
    torch.testing.assert_close(from_pil, t(uint8.float() / 255), atol=1.01 / 255 / 0.2, rtol=0)


def test_flip_only_when_training_with_augment():
    pre = Preprocess((1, 4, 4), (0.0,), (1.0,))
    ramp = torch.linspace(0, 1, 4).expand(1, 4, 4)
    assert all(torch.equal(ImageTransform(pre)(ramp), ramp) for _ in range(20))
    assert all(torch.equal(ImageTransform(pre, train=True)(ramp), ramp) for _ in range(20))
    torch.manual_seed(0)
    outs = [ImageTransform(pre, train=True, flip=True)(ramp) for _ in range(40)]
    assert any(torch.equal(o, ramp) for o in outs)
    assert any(torch.equal(o, ramp.flip(-1)) for o in outs)


def test_transform_is_picklable():
    t = ImageTransform(RGB32, train=True, flip=True)
    torch.testing.assert_close(pickle.loads(pickle.dumps(t))(torch.zeros(3, 5, 5)),
                               torch.zeros(3, 32, 32))


@pytest.mark.parametrize(
    "args",
    [
        ((3, 32), (0, 0, 0), (1, 1, 1)),
        ((3, 0, 32), (0, 0, 0), (1, 1, 1)),
        ((3, 32, 32), (0, 0), (1, 1)),
        ((1, 32, 32), (0,), (0,)),
    ],
)
def test_bad_preprocess(args):
    with pytest.raises(DataError):
        Preprocess(*args)


def test_bad_inputs_to_transform():
    t = ImageTransform(RGB32)
    with pytest.raises(DataError, match="channels"):
        ImageTransform(Preprocess((2, 4, 4), (0, 0), (1, 1)))(torch.zeros(3, 4, 4))
    with pytest.raises(DataError, match="int64"):
        t(torch.zeros(3, 4, 4, dtype=torch.int64))
    with pytest.raises(DataError, match="PIL image or an array"):
        t([[0.0]])


def test_load_image_reads_file(tmp_path):
    path = write_image(tmp_path / "red.png", (255, 0, 0))
    x = RGB32.load_image(path)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert dominant(torch.from_numpy(x)) == 0


def test_load_image_names_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg") as info:
        RGB32.load_image(bad)
    assert "\n" not in str(info.value)
    # A truncated JPEG (a real header, half the data) is detected when decoded.
    good = write_image(tmp_path / "good.jpg", (1, 2, 3), size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        RGB32.load_image(truncated)
    with pytest.raises(DataError, match="does not exist"):
        RGB32.load_image(tmp_path / "nope.jpg")


# ----------------------------------------------------------------------------------------------
# dataset_root / names
# ----------------------------------------------------------------------------------------------


def test_dataset_root(tmp_path, monkeypatch):
    monkeypatch.delenv("PACKTOOL_DATA", raising=False)
    assert dataset_root(tmp_path) == tmp_path
    with pytest.raises(DataError, match=r"`root=DIR`.*PACKTOOL_DATA"):
        dataset_root(None)
    monkeypatch.setenv("PACKTOOL_DATA", str(tmp_path))
    assert dataset_root(None) == tmp_path
    with pytest.raises(DataError, match="not a directory"):
        dataset_root(tmp_path / "missing")


def test_registry_names():
    assert set(DATASETS) == {"digits", "cubs", "cars", "flowers", "imagenet", "cifar100",
                             "sketch", "wikiart"}
    assert issubclass(DataError, PackToolError)


def test_unknown_dataset_lists_registered_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'mnist'") as info:
        load_task_data("mnist", RGB32)
    for name in DATASETS:
        assert name in str(info.value)
    assert "did you mean" not in str(info.value)  # nothing registered is close to mnist
    with pytest.raises(DataError, match=r"'cifar10': not a registered name \(did you mean "
                                        r"'cifar100'\? known: cars, "):
        load_task_data("cifar10", RGB32)


def test_registered_dataset_needs_a_root(monkeypatch):
    monkeypatch.delenv("PACKTOOL_DATA", raising=False)
    with pytest.raises(DataError, match="`root=DIR`"):
        load_task_data("cubs", RGB32)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cubs", ["CUB_200_2011/images/", "CUB_200_2011/images.txt",
                  "CUB_200_2011/bounding_boxes.txt", "CUB_200_2011/train_test_split.txt"]),
        ("cars", ["stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_train/",
                  "stanford_cars/devkit/cars_train_annos.mat",
                  "stanford_cars/cars_test_annos_withlabels.mat"]),
        ("flowers", ["flowers-102/jpg/", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"]),
        ("imagenet", ["imagenet/train/", "imagenet/val/"]),
        ("cifar100", ["cifar-100-python/train", "cifar-100-python/test",
                      "cifar-100-python/meta"]),
        ("sketch", ["sketch/train/", "sketch/test/"]),
        ("wikiart", ["wikiart/train/", "wikiart/test/"]),
    ],
)
def test_missing_dataset_names_expected_files_and_directory(tmp_path, name, expected):
    with pytest.raises(DataError) as info:
        load_task_data(name, RGB32, root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and f"'{name}'" in message
    for path in expected:
        assert path in message


def test_partly_present_dataset_names_only_the_missing_files(tmp_path):
    (tmp_path / "CUB_200_2011" / "images").mkdir(parents=True)
    (tmp_path / "CUB_200_2011" / "images.txt").write_text("")
    with pytest.raises(DataError, match=r"missing CUB_200_2011/image_class_labels.txt, "):
        load_task_data("cubs", RGB32, root=tmp_path)


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------

GRAY8 = Preprocess((1, 8, 8), (0.5,), (0.5,))


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_task_data("digits", GRAY8)


def test_digits_sizes_and_items(digits):
    assert digits.classes == [str(k) for k in range(10)]
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert abs(len(digits.test) - 0.2 * 1797) <= 10
    assert abs(len(digits.val) - 0.1 * (1797 - len(digits.test))) <= 10
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    assert x.min() >= -1 and x.max() <= 1  # 0..16 / 16 then (x - 0.5) / 0.5
    assert digits.augment is False
    assert digits.spec == {"data": "digits", "root": None, "classes": None,
                           "val_fraction": 0.1, "seed": 0}


def test_digits_values_match_sklearn(digits):
    from sklearn.datasets import load_digits

    images = load_digits().images
    i = int(digits.test.indices[3])
    x, y = digits.test[3]
    torch.testing.assert_close(x[0], torch.from_numpy(images[i] / 16 * 2 - 1).float())
    assert y == int(load_digits().target[i])


def test_digits_splits_are_disjoint_and_stratified(digits):
    assert digits.train.source is digits.val.source is digits.test.source
    train, val, test = (set(s.indices.tolist()) for s in (digits.train, digits.val, digits.test))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(1797))
    for split, share in ((digits.test, 0.2), (digits.val, 0.1 * 0.8)):
        counts = np.bincount(split.labels, minlength=10)
        totals = np.bincount(digits.train.source.labels, minlength=10)
        assert np.all(np.abs(counts - share * totals) <= 1.5)


def test_digits_split_is_deterministic_and_test_ignores_seed(digits):
    again = load_task_data("digits", GRAY8)
    other = load_task_data("digits", GRAY8, seed=1)
    assert np.array_equal(again.val.indices, digits.val.indices)
    assert np.array_equal(again.train.indices, digits.train.indices)
    assert np.array_equal(other.test.indices, digits.test.indices)
    assert not np.array_equal(other.val.indices, digits.val.indices)
    rebuilt = load_task_data(**other.spec, preprocess=GRAY8)
    assert np.array_equal(rebuilt.val.indices, other.val.indices)


def test_digits_val_fraction(digits):
    none = load_task_data("digits", GRAY8, val_fraction=0.0)
    assert len(none.val) == 0 and len(none.train) == len(digits.train) + len(digits.val)
    half = load_task_data("digits", GRAY8, val_fraction=0.5)
    assert abs(len(half.val) - len(half.train)) <= 10
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match="val_fraction"):
            load_task_data("digits", GRAY8, val_fraction=bad)


def test_digits_convert_to_rgb_and_resize():
    data = load_task_data("digits", RGB32, classes=[0])
    x, _ = data.test[0]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert data.augment is False  # digits are never flipped


def test_digits_in_a_dataloader(digits):
    x, y = next(iter(DataLoader(digits.train, batch_size=16, shuffle=True)))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64


def test_splits_pickle_and_spec_is_json(digits):
    # DataLoader workers started with "spawn" (macOS, Windows) pickle the dataset.
    copy = pickle.loads(pickle.dumps(digits.val))
    assert torch.equal(copy[5][0], digits.val[5][0]) and copy[5][1] == digits.val[5][1]
    assert json.loads(json.dumps(digits.spec)) == digits.spec


# ----------------------------------------------------------------------------------------------
# --classes subsets
# ----------------------------------------------------------------------------------------------


def test_classes_subset_remaps_labels_in_given_order(digits):
    sub = load_task_data("digits", GRAY8, classes=[7, 2])
    assert sub.classes == ["7", "2"]
    for split, full in ((sub.train, digits.train), (sub.val, digits.val), (sub.test, digits.test)):
        assert set(labels_of(split)) == {0, 1}
        original = split.source.labels[split.indices]
        assert np.array_equal(np.where(original == 7, 0, 1), split.labels)
        # A class's split does not depend on which other classes are chosen.
        keep = np.isin(full.source.labels[full.indices], [7, 2])
        assert np.array_equal(np.sort(split.indices), np.sort(full.indices[keep]))
    assert sub.spec["classes"] == [7, 2]
    assert sub.train[0][1] in (0, 1)


def test_classes_given_as_text():
    assert load_task_data("digits", GRAY8, classes="0-2,9").classes == ["0", "1", "2", "9"]


@pytest.mark.parametrize(("classes", "words"), [
    ([10], "out of range.*0..9"),
    ([-1], "out of range"),
    ([1, 1], "twice"),
    ([], "empty"),
    (["one"], "no class 'one'"),
    ([1.0], "indices or names"),
])
def test_bad_classes(classes, words):
    with pytest.raises(DataError, match=words):
        load_task_data("digits", GRAY8, classes=classes)


# ----------------------------------------------------------------------------------------------
# image folders (sketch, wikiart, imagenet, any path)
# ----------------------------------------------------------------------------------------------


def test_image_folder_with_val(tmp_path):
    base = write_folder(tmp_path / "pets", splits=("train", "val"), per_class=10)
    (base / "train" / "a_red" / "notes.txt").write_text("not an image")
    (base / "train" / "a_red" / ".hidden.jpg").write_bytes(b"")
    data = load_task_data(str(base), RGB32, val_fraction=0.2)
    assert data.classes == ["a_red", "b_green"]
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 20)
    assert labels_of(data.val).count(0) == 2  # stratified
    assert all(data.test.source.paths[i].startswith("val" + os.sep) for i in data.test.indices)
    check_colors(data.train)
    check_colors(data.test)
    assert data.augment is True
    assert data.spec["data"] == str(base.resolve()) and data.spec["root"] is None
    rebuilt = load_task_data(**data.spec, preprocess=RGB32)
    assert np.array_equal(rebuilt.val.indices, data.val.indices)


def test_image_folder_with_val_and_test_uses_published_val(tmp_path):
    base = write_folder(tmp_path / "pets", splits=("train", "val", "test"), per_class=2)
    write_image(base / "test" / "a_red" / "extra.png", COLORS[0])
    data = load_task_data(str(base), RGB32)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 4, 5)
    paths = data.train.source.paths
    assert all(paths[i].startswith("val") for i in data.val.indices)
    assert all(paths[i].startswith("test") for i in data.test.indices)
    check_colors(data.val)


def test_image_folder_relative_path_and_small_inputs(tmp_path, monkeypatch):
    write_folder(tmp_path / "digits", splits=("train", "test"))
    monkeypatch.chdir(tmp_path)
    data = load_task_data("./digits", Preprocess((3, 16, 16), (0, 0, 0), (1, 1, 1)))
    assert data.classes == ["a_red", "b_green"]
    assert data.spec["data"] == str((tmp_path / "digits").resolve())
    assert data.augment is False  # below 32 px no flips
    # A bare registered name still means the registered dataset, not the folder.
    assert load_task_data("digits", GRAY8).classes[0] == "0"


def test_image_folder_recurses_into_class_subfolders(tmp_path):
    base = write_folder(tmp_path / "f", per_class=1)
    write_image(base / "train" / "a_red" / "more" / "x.PNG", COLORS[0])
    data = load_task_data(str(base), RGB32, val_fraction=0)
    assert labels_of(data.train) == [0, 0, 1]


@pytest.mark.parametrize(("name", "held_out"), [("sketch", "test"), ("wikiart", "test"),
                                                 ("imagenet", "val")])
def test_registered_folder_datasets(tmp_path, monkeypatch, name, held_out):
    classes = ("n01", "n02", "n03")
    write_folder(tmp_path / name, splits=("train", held_out), per_class=4, classes=classes)
    monkeypatch.setenv("PACKTOOL_DATA", str(tmp_path))
    data = load_task_data(name, RGB32, classes=[2, 0])
    assert data.classes == ["n03", "n01"]
    assert (len(data.train) + len(data.val), len(data.test)) == (8, 8)
    assert {dominant(data.test[i][0]) for i in range(len(data.test))} == {2, 0}
    assert all(y == (0 if dominant(x) == 2 else 1) for x, y in data.train)
    assert data.spec == {"data": name, "root": None, "classes": [2, 0], "val_fraction": 0.1,
                         "seed": 0, "resize": 37}  # whole photographs: resize 37, crop 32
    explicit = load_task_data(name, RGB32, root=tmp_path)
    assert explicit.spec["root"] == str(tmp_path.resolve())


def test_empty_class_folder_is_named(tmp_path):
    base = write_folder(tmp_path / "f")
    (base / "train" / "c_empty").mkdir()
    (base / "train" / "c_empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"c_empty has no images"):
        load_task_data(str(base), RGB32)


def test_folder_without_classes_or_splits(tmp_path):
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "test").mkdir()
    with pytest.raises(DataError, match=r"train has no class folders"):
        load_task_data(str(tmp_path / "a"), RGB32)
    (tmp_path / "b" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no val/ or test/ subfolder"):
        load_task_data(str(tmp_path / "b"), RGB32)
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"no train/ subfolder"):
        load_task_data(str(tmp_path / "c"), RGB32)
    with pytest.raises(DataError, match="not a folder"):
        load_task_data(str(tmp_path / "nothing-here"), RGB32)


def test_a_folder_without_train_says_what_it_looks_like(tmp_path):
    """The two folders users give by mistake: one split of a dataset, and a tree of class
    folders that has no splits yet."""
    base = write_folder(tmp_path / "pets")
    with pytest.raises(DataError, match=rf"train/ is one of the splits of {base}; give that"):
        load_task_data(str(base / "train"), RGB32)
    flat = write_folder(tmp_path / "flat", splits=(".",))
    with pytest.raises(DataError, match=r"its subfolders \(a_red, b_green\) look like classes: "
                                        rf"move them into {flat / 'train'}/ "):
        load_task_data(str(flat), RGB32)


def test_held_out_class_unknown_to_train(tmp_path):
    base = write_folder(tmp_path / "f")
    write_image(base / "test" / "zebra" / "0.jpg", COLORS[2])
    with pytest.raises(DataError, match=r"zebra has no counterpart"):
        load_task_data(str(base), RGB32)


def test_corrupt_image_in_folder_is_named_when_read(tmp_path):
    base = write_folder(tmp_path / "f", per_class=1)
    (base / "test" / "b_green" / "0.jpg").write_bytes(b"garbage")
    data = load_task_data(str(base), RGB32)
    with pytest.raises(DataError, match=r"cannot read image .*b_green.0\.jpg"):
        [data.test[i] for i in range(len(data.test))]


def test_image_extensions_are_lower_case():
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_image_files_put_a_folders_images_in_its_place(tmp_path):
    """What predict reads: files as given, a folder as the images below it, sorted, without
    hidden files or folders and without files that are not images."""
    top = tmp_path / "photos"
    for name in ("b.jpg", "a.PNG", "sub/c.webp", "notes.txt", ".hidden.jpg", ".cache/d.jpg"):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(b"x")
    single = tmp_path / "single.bin"  # a file given by name is read whatever its ending
    single.write_bytes(b"x")
    assert image_files([single, top]) == [single, top / "a.PNG", top / "b.jpg",
                                          top / "sub" / "c.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"folder .*empty has no images \(\.jpg"):
        image_files([single, tmp_path / "empty"])
    with pytest.raises(DataError, match=r"image .*missing\.jpg does not exist"):
        image_files([tmp_path / "missing.jpg"])


# ----------------------------------------------------------------------------------------------
# CUB-200-2011
# ----------------------------------------------------------------------------------------------


def write_cubs(root, per_class=(2, 1)):
    """3 classes x (train, test) images; boxes painted in the class color on gray."""
    base = root / "CUB_200_2011"
    class_names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    lines = {n: [] for n in ("images", "image_class_labels", "train_test_split",
                             "bounding_boxes")}
    image_id = 0
    for k, name in enumerate(class_names):
        for is_train, count in zip((1, 0), per_class, strict=True):
            for _ in range(count):
                image_id += 1
                x, y, w, h = 6 + k, 4, 20.5, 14.0
                relative = f"{name}/{name[4:]}_{image_id:04d}.jpg"
                write_image(base / "images" / relative, COLORS[k], size=(40, 30),
                            box=(x, y, x + w, y + h))
                lines["images"].append(f"{image_id} {relative}")
                lines["image_class_labels"].append(f"{image_id} {k + 1}")
                lines["train_test_split"].append(f"{image_id} {is_train}")
                lines["bounding_boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
    for name, rows in lines.items():
        (base / f"{name}.txt").write_text("\n".join(rows) + "\n")
    (base / "classes.txt").write_text(
        "".join(f"{k + 1} {n}\n" for k, n in enumerate(class_names)))
    return base, class_names


def test_cubs(tmp_path):
    _base, names = write_cubs(tmp_path)
    data = load_task_data("cubs", RGB32, root=tmp_path, val_fraction=0.5)
    assert data.classes == names
    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 3)
    assert labels_of(data.test) == [0, 1, 2]
    check_box_crops(data)
    assert data.augment is True


def test_cubs_subset_and_errors(tmp_path):
    base, names = write_cubs(tmp_path)
    sub = load_task_data("cubs", RGB32, root=tmp_path, classes=[2])
    assert sub.classes == [names[2]] and labels_of(sub.test) == [0]
    with pytest.raises(DataError, match="out of range"):
        load_task_data("cubs", RGB32, root=tmp_path, classes=[3])
    (base / "bounding_boxes.txt").write_text("1 0 0 1\n")
    with pytest.raises(DataError, match=r"bounding_boxes.txt line 1: expected 5 fields"):
        load_task_data("cubs", RGB32, root=tmp_path)


def test_cubs_missing_image_file(tmp_path):
    base, _names = write_cubs(tmp_path)
    missing = next((base / "images").rglob("*.jpg"))
    missing.unlink()
    with pytest.raises(DataError, match=rf"1 of 9 images listed in .*images.txt are missing, "
                                        rf"e.g. .*{missing.name}"):
        load_task_data("cubs", RGB32, root=tmp_path)


# ----------------------------------------------------------------------------------------------
# Stanford Cars
# ----------------------------------------------------------------------------------------------

CAR_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def cars_annotations(rows):
    """A 1 x N MATLAB struct array like cars_train_annos.mat's ``annotations``."""
    records = np.zeros((1, len(rows)), dtype=[(f, "O") for f in CAR_FIELDS])
    for i, (box, label, fname) in enumerate(rows):
        values = [np.array([[v]], dtype=np.uint16) for v in box]
        records[0, i] = (*values, np.array([[label]], dtype=np.uint8), np.array([fname]))
    return {"annotations": records}


def write_cars(root, train_per_class=2, test_per_class=1):
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Volvo XC90 SUV 2007"]
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(names, dtype=object).reshape(1, -1)})
    for folder, mat, per_class in (("cars_train", "devkit/cars_train_annos.mat", train_per_class),
                                   ("cars_test", "cars_test_annos_withlabels.mat",
                                    test_per_class)):
        rows = []
        for k in range(len(names)):
            for i in range(per_class):
                fname = f"{k}{i:04d}.jpg"
                box = (5, 3 + k, 30, 20)
                write_image(base / folder / fname, COLORS[k], size=(36, 26), box=box)
                rows.append((box, k + 1, fname))
        scipy.io.savemat(base / mat, cars_annotations(rows))
    return base, names


def test_cars(tmp_path):
    _base, names = write_cars(tmp_path)
    data = load_task_data("cars", RGB32, root=tmp_path, val_fraction=0.5)
    assert data.classes == names
    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 3)
    assert labels_of(data.test) == [0, 1, 2]
    assert all(data.test.source.paths[i].startswith("cars_test/") for i in data.test.indices)
    check_box_crops(data)


def test_cars_bad_box_and_bad_class(tmp_path):
    base, _names = write_cars(tmp_path, train_per_class=1)
    mat = base / "devkit" / "cars_train_annos.mat"
    scipy.io.savemat(mat, cars_annotations([((100, 100, 120, 120), 1, "00000.jpg")]))
    data = load_task_data("cars", RGB32, root=tmp_path, classes=[0])
    with pytest.raises(DataError, match=r"bounding box .* lies outside image .*00000.jpg"):
        [data.train[i] for i in range(len(data.train))] + [data.val[i] for i in
                                                           range(len(data.val))]
    scipy.io.savemat(mat, cars_annotations([((1, 1, 9, 9), 197, "00000.jpg")]))
    with pytest.raises(DataError, match=r"class 197 of 00000.jpg is not in 1..3"):
        load_task_data("cars", RGB32, root=tmp_path)
    mat.write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"cannot read .*cars_train_annos.mat"):
        load_task_data("cars", RGB32, root=tmp_path)


# ----------------------------------------------------------------------------------------------
# Oxford Flowers-102
# ----------------------------------------------------------------------------------------------


def write_flowers(root):
    """12 images of labels 1..3; ids split into trnid / valid / tstid like setid.mat."""
    base = root / "flowers-102"
    labels = np.array([[1, 2, 3] * 4], dtype=np.uint8)
    for i, label in enumerate(labels[0], 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", COLORS[label - 1])
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels})
    split = {"trnid": [1, 2, 3, 4, 5, 6], "valid": [7, 8, 9], "tstid": [10, 11, 12]}
    scipy.io.savemat(base / "setid.mat",
                     {k: np.array([v], dtype=np.uint16) for k, v in split.items()})
    return base


def test_flowers_uses_published_val_and_test(tmp_path):
    write_flowers(tmp_path)
    data = load_task_data("flowers", RGB32, root=tmp_path, classes=[0, 1, 2])
    assert data.classes == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert data.train.indices.tolist() == [0, 1, 2, 3, 4, 5]
    assert data.val.indices.tolist() == [6, 7, 8]
    assert data.test.indices.tolist() == [9, 10, 11]
    assert labels_of(data.test) == [0, 1, 2]
    for split in (data.train, data.val, data.test):
        check_colors(split)
    assert data.augment is True
    assert load_task_data("flowers", RGB32, root=tmp_path, classes=[1]).classes == [
        "hard-leaved pocket orchid"]


def test_flowers_full_dataset_needs_every_class(tmp_path):
    write_flowers(tmp_path)
    with pytest.raises(DataError, match=r"no training images of class 3 \('sweet pea'\)"):
        load_task_data("flowers", RGB32, root=tmp_path)


def test_flowers_missing_listed_image(tmp_path):
    base = write_flowers(tmp_path)
    (base / "jpg" / "image_00011.jpg").unlink()
    with pytest.raises(DataError, match=r"listed in .*setid.mat are missing, e.g. .*00011.jpg"):
        load_task_data("flowers", RGB32, root=tmp_path, classes=[0])


# ----------------------------------------------------------------------------------------------
# CIFAR-100
# ----------------------------------------------------------------------------------------------


def write_cifar100(root, per_class=(4, 2)):
    """Pickles with the publisher's keys; class k's images are painted COLORS[k]."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    names = ["apple", "aquarium_fish", "baby"]
    for split, count in zip(("train", "test"), per_class, strict=True):
        labels = [k for k in range(3) for _ in range(count)]
        data = np.stack([np.broadcast_to(np.array(COLORS[k], np.uint8)[:, None, None],
                                         (3, 32, 32)).reshape(-1) for k in labels])
        batch = {"filenames": [f"{i}.png" for i in range(len(labels))], "batch_label": split,
                 "fine_labels": labels, "coarse_labels": [0] * len(labels), "data": data}
        with open(base / split, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["x"]}, f, protocol=2)
    return base, names


def test_cifar100(tmp_path):
    _base, names = write_cifar100(tmp_path)
    data = load_task_data("cifar100", RGB32, root=tmp_path, val_fraction=0.25)
    assert data.classes == names
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 6)
    for split in (data.train, data.val, data.test):
        check_colors(split)
    assert data.augment is True
    x, _ = data.test[0]
    torch.testing.assert_close(x[0], torch.ones(32, 32))


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar100_refuses_code_in_pickles(tmp_path):
    base, _ = write_cifar100(tmp_path)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": _Boom()}, f)
    with pytest.raises(DataError, match=r"cannot read .*meta: refusing to load"):
        load_task_data("cifar100", RGB32, root=tmp_path)
    (base / "meta").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=r"cannot read .*meta"):
        load_task_data("cifar100", RGB32, root=tmp_path)


@pytest.mark.filterwarnings("error")
def test_read_only_arrays_are_copied_not_wrapped():
    """An image array handed in read-only (a memory map, a frozen batch) already at the network's
    shape: torch must not wrap it (undefined behaviour and a warning), and it stays unchanged."""
    pre = Preprocess((1, 4, 4), (0.0,), (1.0,))
    original = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    array = original.copy()
    array.setflags(write=False)
    for train in (False, True):
        x = ImageTransform(pre, train=train)(array)
        x += 1  # writable, and not the caller's memory
        np.testing.assert_array_equal(array, original)
