"""The paper's input recipes per dataset (issue 14): whole photographs are resized and cropped
(at random in training, the center at evaluation); box-cropped and small images are resized
whole; exported ONNX files carry the recipe, and predict applies it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import write_cars, write_cifar100, write_cubs, write_flowers, write_folder

from packtool import Pack, Preprocess, TrainConfig, add_task, load_task_data
from packtool.data import ImageTransform
from packtool.exporters import TaskMetadata, export_onnx, predict, task_onnx

RGB32 = Preprocess((3, 32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(("name", "write", "resize"), [
    ("flowers", write_flowers, 37), ("cubs", write_cubs, None), ("cars", write_cars, None),
    ("cifar100", write_cifar100, None),
])
def test_each_published_layout_takes_its_recipe(tmp_path, name, write, resize):
    write(tmp_path)
    data = load_task_data(name, RGB32, root=tmp_path, classes=[0, 1])
    assert data.spec.get("resize") == resize
    assert data.test[0][0].shape == (3, 32, 32)


def test_folders_take_the_crop_recipe_at_32_pixels_and_more(tmp_path):
    write_folder(tmp_path / "data", splits=("train", "val"))
    assert load_task_data(str(tmp_path / "data"), RGB32).spec["resize"] == 37
    small = Preprocess((3, 16, 16), (0, 0, 0), (1, 1, 1))
    assert "resize" not in load_task_data(str(tmp_path / "data"), small).spec
    assert "resize" not in load_task_data("digits", Preprocess((1, 8, 8), (0,), (1,))).spec


def _stripes(path, size=(60, 40)):
    """A smooth ramp: every column has its own value, so crops are told apart."""
    width, height = size
    pixels = np.tile((np.arange(width) * 200 // width).astype(np.uint8), (height, 1))
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(path)
    return path


def test_training_crops_at_random_and_evaluation_at_the_center(tmp_path):
    image = Image.open(_stripes(tmp_path / "s.png"))
    pre = RGB32.cropping()
    assert pre.resize == 37
    evaluated = ImageTransform(pre)(image)
    # The center crop of the image resized to a shorter side of 37 (55x37), taken by hand.
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float(), size=(37, 55),
        mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = round((37 - 32) / 2), round((55 - 32) / 2)  # torchvision's center
    expected = resized[:, top:top + 32, left:left + 32] / 255
    torch.testing.assert_close(evaluated, expected, atol=1.01 / 255, rtol=0)
    assert all(torch.equal(ImageTransform(pre)(image), evaluated) for _ in range(3))
    torch.manual_seed(0)
    crops = {ImageTransform(pre, train=True)(image)[0, 0].sum().item() for _ in range(20)}
    assert len(crops) > 3  # random positions


@pytest.mark.slow
def test_onnx_carries_the_recipe_and_predict_reproduces_pytorch(tmp_path):
    write_folder(tmp_path / "data", splits=("train", "val"), per_class=4)
    pack = Pack.create("lenet", (3, 32, 32), kwargs={"width": 4})
    data = load_task_data(str(tmp_path / "data"), pack.preprocess)
    pack, _ = add_task(pack, "t", data, 0.5, TrainConfig(epochs=1, finetune_epochs=0,
                                                         device="cpu"))
    path = tmp_path / "t.onnx"
    export_onnx(pack, "t", path)
    meta = TaskMetadata.from_props({p.key: p.value for p in task_onnx(pack, "t").metadata_props})
    assert meta.resize == 37 and meta.preprocess == replace(pack.preprocess, resize=37)
    images = [_stripes(tmp_path / "a.png"), _stripes(tmp_path / "b.png", size=(33, 80))]
    result = predict(path, images, top=2)
    model = pack.model_for("t")
    for image, item in zip(images, result.predictions):
        with torch.no_grad():
            x = torch.from_numpy(meta.preprocess.load_image(image))[None]
            probs = torch.softmax(model(x), 1)[0]
        for top in item["top"]:
            k = data.classes.index(top["class"])
            assert abs(top["probability"] - float(probs[k])) < 1e-4
