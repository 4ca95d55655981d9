"""What a first run on real data needs (issue 14): a schedule that trains from scratch, bad
image files found before training, checkpoints that cost what they are worth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import ARCH, assert_error, invoke, ok, ok_json
from conftest import StopAfter
from PIL import Image
from torch.utils.data import ConcatDataset

from packtool import (
    DataError,
    Pack,
    PackToolError,
    Preprocess,
    Progress,
    TrainConfig,
    add_task,
    load_task_data,
)
from packtool.config import FROM_SCRATCH, schedule
from packtool.data import missing_classes, task_data
from packtool.formats.checkpoint import Checkpoint
from packtool.job import default_task_name

RGB16 = Preprocess((3, 16, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# -- the default schedule -----------------------------------------------------------------------


def test_the_schedule_follows_the_weights():
    paper, note = schedule(pretrained=True)
    assert (paper.lr, paper.finetune_lr) == (1e-3, 1e-4) and note is None
    scratch, note = schedule(pretrained=False)
    assert (scratch.lr, scratch.finetune_lr) == (FROM_SCRATCH["lr"], FROM_SCRATCH["finetune_lr"])
    assert "from scratch" in note
    chosen, note = schedule(pretrained=False, settings={"lr": 0.2, "finetune_lr": 0.02})
    assert (chosen.lr, chosen.finetune_lr) == (0.2, 0.02) and note is None


def test_add_task_without_a_config_says_it_trains_from_scratch(make_task):
    said = []

    class Say(Progress):
        def message(self, text):
            said.append(text)

    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    pack, _ = add_task(pack, "a", make_task(2, seed=0), 0.5, progress=Say(),
                       settings={"epochs": 1, "finetune_epochs": 0, "device": "cpu"})
    assert any("from scratch" in text for text in said)
    assert pack.tasks[0].hparams["lr"] == FROM_SCRATCH["lr"]


def test_a_config_checks_its_device_name_and_add_task_the_device(make_task):
    """The name when the config is made (no torch needed, as a plan file is read); whether
    the device is there when a task is added, before it trains."""
    with pytest.raises(PackToolError, match=r"unknown device 'tpu'; use auto, cpu, cuda or "
                                            r"cuda:N"):
        TrainConfig(device="tpu")
    for name in ("auto", "cpu", "cpu:0", "cuda", "cuda:1"):
        assert TrainConfig(device=name).device == name
    if torch.cuda.is_available():
        return
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 8})
    with pytest.raises(PackToolError, match="CUDA was requested but is not available"):
        add_task(pack, "a", make_task(2, seed=0), 0.5, TrainConfig(epochs=1, device="cuda"))
    assert pack.tasks == []


def test_the_cli_uses_the_from_scratch_rates_unless_given(tmp_path):
    model = tmp_path / "m.pt"
    ok("init", model, *ARCH)
    text = ok("add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0.5",
              "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu").stdout
    assert "training from scratch" in text
    ok("add-task", model, "--data", "digits", "--classes", "2,3", "--prune", "0.5",
       "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu", "--lr", "0.01",
       "--finetune-lr", "0.001")
    first, second = Pack.load(model).tasks
    assert first.hparams["lr"] == FROM_SCRATCH["lr"]
    assert (second.hparams["lr"], second.hparams["finetune_lr"]) == (0.01, 0.001)


# -- bad image files ----------------------------------------------------------------------------


def _folder(root, bad: int = 0):
    """An image folder with two classes of four PNGs each; ``bad`` train files are broken."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    for i in range(bad):
        (root / "train" / "a" / f"{i}.png").write_bytes(b"not an image")
    return root


def test_bad_files_are_all_named_before_training(tmp_path):
    folder = _folder(tmp_path / "data", bad=2)
    checked = []
    with pytest.raises(DataError, match=r"2 of 16 images .* cannot be read: .*0\.png, .*1\.png"):
        load_task_data(str(folder), RGB16, skip_bad_images=False,
                       on_progress=lambda done, total: checked.append((done, total)))
    assert checked[-1] == (16, 16)
    data = load_task_data(str(folder), RGB16)  # unchecked: read as they are used
    assert len(data.train) + len(data.val) + len(data.test) == 16


def test_skipping_bad_files_leaves_them_out_and_says_how_many(tmp_path):
    folder = _folder(tmp_path / "data", bad=2)
    data = load_task_data(str(folder), RGB16, skip_bad_images=True)
    assert sorted(p.rsplit("/", 1)[-1] for p in data.skipped) == ["0.png", "1.png"]
    assert len(data.train) + len(data.val) + len(data.test) == 14
    assert data.spec["skip_bad_images"] is True
    pack = Pack.create("lenet", (3, 16, 16), kwargs={"width": 4})
    pack, result = add_task(pack, "t", data, 0.5, TrainConfig(epochs=1, finetune_epochs=0,
                                                               device="cpu"))
    assert result.skipped_images == 2 and pack.tasks[0].metrics["skipped_images"] == 2
    assert result.skipped_files == data.skipped
    assert len(task_data(pack, "t").test) == len(data.test)  # rebuilt with the same skip


def test_the_cli_checks_files_first_and_skips_on_request(tmp_path):
    folder = _folder(tmp_path / "data", bad=1)
    model = tmp_path / "m.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "3x16x16", "--kwarg", "width=4")
    before = model.read_bytes()
    add = ("add-task", model, "--data", folder, "--prune", "0.5", "--epochs", "1",
           "--finetune-epochs", "0", "--device", "cpu")
    assert_error(invoke(*add), 1, "1 of 16 images")
    line = assert_error(invoke(*add), 1, "--skip-bad-images")
    assert "skip_bad_images" not in line
    assert model.read_bytes() == before
    doc = ok_json(*add, "--skip-bad-images")
    assert doc["skipped_images"] == 1
    assert [p.replace("\\", "/").rsplit("/", 3)[-3:] for p in doc["skipped_files"]] == [
        ["train", "a", "0.png"]]
    text = ok(*add, "--skip-bad-images", "--task", "again").stdout
    assert "unreadable images left out" in text and "0.png" in text


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_every_skips_saves_within_the_interval(tmp_path, make_task, monkeypatch):
    saves = []
    real = Checkpoint.save
    monkeypatch.setattr(Checkpoint, "save", lambda self, path: (saves.append(self.epoch),
                                                                real(self, path)))
    config = TrainConfig(epochs=3, finetune_epochs=2, lr=0.05, device="cpu")
    base = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 8})
    data = make_task(2, seed=0)
    expected, _ = add_task(base, "a", data, 0.5, config, checkpoint=tmp_path / "a.ckpt")
    assert len(saves) == 3 + 1 + 2  # every epoch, and the fine-tuning's start
    saves.clear()
    ckpt = tmp_path / "b.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(base, "a", data, 0.5, config, checkpoint=ckpt, checkpoint_every=3600.0,
                 progress=StopAfter(4))
    assert saves == [] and not ckpt.exists()  # an hour did not pass
    resumed, _ = add_task(base, "a", data, 0.5, config, checkpoint=ckpt, resume=True,
                          checkpoint_every=3600.0)  # nothing to resume: starts over
    for key in expected.shared:
        assert torch.equal(resumed.shared[key], expected.shared[key])


# -- loaders and mixed precision ----------------------------------------------------------------


def test_workers_auto_fit_the_data():
    from torch.utils.data import TensorDataset

    from packtool.config import SMALL_DATASET, loader_settings

    cpu = torch.device("cpu")
    tensors = TensorDataset(torch.zeros(10_000, 1))
    assert loader_settings("auto", tensors, cpu, in_memory=True)["num_workers"] == 0
    assert loader_settings("auto", range(SMALL_DATASET), cpu)["num_workers"] == 0
    files = loader_settings("auto", range(SMALL_DATASET + 1), cpu)
    assert 1 <= files["num_workers"] <= 8 and files["persistent_workers"] is True
    assert loader_settings(3, range(10), cpu)["num_workers"] == 3
    assert loader_settings(0, range(10), cpu) == {"num_workers": 0, "pin_memory": False}


@pytest.mark.slow
def test_worker_processes_and_bfloat16_end_to_end(tmp_path):
    """--workers 2 --amp on the CPU: two tasks from image files, the first bit-exact after."""
    folder = _folder(tmp_path / "data")
    model = tmp_path / "m.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "3x16x16", "--kwarg", "width=4")
    add = ("add-task", model, "--data", folder, "--prune", "0.5", "--epochs", "2",
           "--finetune-epochs", "1", "--device", "cpu", "--workers", "2", "--amp")
    first = ok_json(*add, "--task", "first")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        before = Pack.load(model).model_for("first")(x)
    ok_json(*add, "--task", "second")
    pack = Pack.load(model)
    with torch.no_grad():
        assert torch.equal(pack.model_for("first")(x), before)
    assert pack.tasks[0].hparams["amp"] is True and pack.tasks[0].metrics["accuracy"] == \
        first["accuracy"]
    assert_error(invoke(*add[:-3], "--workers", "many"), 2)


def test_bfloat16_on_the_cpu_keeps_weights_float32(make_task):
    from packtool.loop import MixedPrecision

    precision = MixedPrecision.choose(torch.device("cpu"), amp=True, convolutional=True)
    assert precision.dtype == torch.bfloat16 and precision.scaler is None
    assert not precision.channels_last  # channels-last is for CUDA
    config = TrainConfig(epochs=1, finetune_epochs=1, lr=0.05, device="cpu", amp=True)
    pack, _ = add_task(Pack.create("lenet", (1, 8, 8), kwargs={"width": 4}), "a",
                       make_task(2, seed=0), 0.5, config)
    assert all(w.dtype == torch.float32 for w in pack.shared.values())


# -- decode once --------------------------------------------------------------------------------


def test_cached_images_give_the_same_items(tmp_path):
    from packtool.data import cache_splits, in_memory

    folder = _folder(tmp_path / "data")
    pre = Preprocess((3, 32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    plain, cached = (load_task_data(str(folder), pre) for _ in range(2))
    assert cache_splits([cached.train, cached.test], budget=0) == 0  # over the budget
    assert cached.train.cached is None
    size = cache_splits([cached.train, cached.test], budget=1e9)
    assert size == sum(t.nbytes for s in (cached.train, cached.test) for t in s.cached)
    assert all(t.dtype == torch.uint8 for t in cached.train.cached)  # 8-bit until the end
    # Evaluation has no random part: its images are kept finished, and need no loader workers.
    assert all(t.dtype == torch.float32 and t.shape == (3, 32, 32) for t in cached.test.cached)
    assert in_memory(cached.test) and not in_memory(cached.train)
    assert not in_memory(plain.test)
    # A refit trains on training + validation images: in memory when both parts are.
    assert in_memory(ConcatDataset([cached.test, cached.test]))
    assert not in_memory(ConcatDataset([cached.test, cached.train]))
    for split in ("train", "test"):
        for i in range(len(getattr(plain, split))):
            torch.manual_seed(i)  # the same random crop and flip
            a, label_a = getattr(plain, split)[i]
            torch.manual_seed(i)
            b, label_b = getattr(cached, split)[i]
            assert torch.equal(a, b) and label_a == label_b


def test_add_task_says_what_it_cached(tmp_path, make_task):
    said = []

    class Say(Progress):
        def message(self, text):
            said.append(text)

    data = load_task_data("digits", Preprocess((1, 8, 8), (0.5,), (0.5,)), classes=[0, 1])
    config = TrainConfig(epochs=1, finetune_epochs=0, lr=0.05, device="cpu")
    plain, _ = add_task(Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 8}), "t", data, 0.5,
                        TrainConfig(epochs=1, finetune_epochs=0, lr=0.05, device="cpu",
                                    cache="none"))
    data = load_task_data("digits", Preprocess((1, 8, 8), (0.5,), (0.5,)), classes=[0, 1])
    cached, _ = add_task(Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 8}), "t", data, 0.5,
                         config, progress=Say())
    assert any(text.startswith("cached 360 decoded images") for text in said), said
    for key in plain.shared:  # the same training, from cached images
        assert torch.equal(plain.shared[key], cached.shared[key])


def test_add_task_says_which_classes_a_split_has_no_image_of(tmp_path):
    """A user's small folder whose val/ (the held-out split here) lacks a class: accepted (its
    accuracy is still an accuracy), and said, since that accuracy leaves the class out."""
    folder = _folder(tmp_path / "data")
    assert missing_classes(load_task_data(str(folder), RGB16)) == {}
    for image in (folder / "val" / "b").iterdir():
        image.unlink()
    (folder / "val" / "b").rmdir()
    data = load_task_data(str(folder), RGB16, val_fraction=0.34)  # two of each class
    assert missing_classes(data) == {"test": ["b"]}
    _, result = add_task(Pack.create("lenet", (3, 16, 16), kwargs={"width": 4}), "t", data, 0.5,
                         TrainConfig(epochs=1, finetune_epochs=0, device="cpu"))
    assert result.missing_classes == {"test": ["b"]}
    model = tmp_path / "model.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "3x16x16", "--kwarg", "width=4")
    args = ("add-task", model, "--data", folder, "--prune", "0.5", "--epochs", "1",
            "--finetune-epochs", "0", "--val-fraction", "0.34", "--device", "cpu")
    text = ok(*args).stdout
    assert ("Note: no test image of class b (1 of the 2 classes): test accuracy leaves it "
            "out") in " ".join(text.split())
    grown = ok(*args, "--task", "again", "--grow", "auto", "--max-size", "1.5").stdout
    assert grown.count("Note: no test image") == 1  # not once more for each growth trial
    assert ok_json(*args, "--task", "json", "--json")["missing_classes"] == {"test": ["b"]}


def test_classes_by_name_as_the_folder_spells_them(tmp_path):
    folder = _folder(tmp_path / "data")
    by_name = load_task_data(str(folder), RGB16, classes="b,a")
    by_index = load_task_data(str(folder), RGB16, classes=[1, 0])
    assert by_name.classes == by_index.classes == ["b", "a"]
    assert by_name.spec == by_index.spec  # the record keeps indices
    with pytest.raises(DataError, match="has no class 'c'; its classes: a, b"):
        load_task_data(str(folder), RGB16, classes="a,c")


def test_classes_by_name_on_the_command_line_name_the_task(tmp_path):
    """Without --task, a task of classes given by name is named by them, as given (indices
    keep their runs: ``digits-0to4``)."""
    folder = _folder(tmp_path / "data")
    model = tmp_path / "m.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "3x16x16", "--kwarg", "width=4")
    doc = ok_json("add-task", model, "--data", folder, "--classes", "b,a", "--prune", "0.5",
                  "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu")
    assert doc["task"] == "data-b-a"
    assert ok_json("info", model)["tasks"][0]["classes"] == ["b", "a"]
    assert f"{folder} classes b,a " in ok("info", model).stdout  # by name, as given
    assert default_task_name("digits", [0, 1, 2, 3, 4]) == "digits-0to4"
    assert default_task_name("path/to/shapes", ["circle", 2, 3]) == "shapes-circle-2-3"
