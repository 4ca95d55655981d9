"""Every user error: a one-line ``Error:``, exit status 1 (2 for usage), no traceback, and the
model file byte-identical afterwards (issue 4)."""

from __future__ import annotations

import shutil

import pytest
from cli_helpers import ARCH, FAST, assert_error, init_model, invoke, ok, ok_json, sha256

from packtool import Pack
from packtool.fileio import file_lock
from packtool.formats import model_file

ADD = ("--data", "digits", "--prune", "0.5", *FAST)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model with one two-class task (digits-0-1), built once."""
    model = init_model(tmp_path_factory.mktemp("base") / "model.pt")
    ok("add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0.5",
       "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu")
    return model


@pytest.fixture
def model(trained, tmp_path):
    copy = tmp_path / "model.pt"
    shutil.copyfile(trained, copy)
    return copy


def fails_unchanged(model, *args, code=1, match=""):
    """Run a command that must fail cleanly and leave ``model`` byte-identical."""
    before = sha256(model)
    line = assert_error(invoke(*args), code, match)
    assert sha256(model) == before
    assert [p.name for p in model.parent.iterdir() if p.name.endswith(".tmp")] == []
    return line


# -- MODEL ----------------------------------------------------------------------------------------


def test_missing_model(tmp_path):
    assert_error(invoke("info", tmp_path / "nope.pt"), 1, "does not exist")
    assert_error(invoke("add-task", tmp_path / "nope.pt", *ADD), 1, "does not exist")
    assert list(tmp_path.iterdir()) == []  # no model and no lock file


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04broken"])
def test_corrupt_model(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    archive = tmp_path / "a.safetensors"
    for command in (("info",), ("eval",), ("add-task", *ADD), ("export", "--archive", archive)):
        fails_unchanged(path, command[0], path, *command[1:])


def test_tampered_model(model):
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    fails_unchanged(model, "eval", model)


def test_model_is_a_directory(tmp_path):
    assert_error(invoke("info", tmp_path), 1, "directory")


# -- init -----------------------------------------------------------------------------------------


def test_init_refuses_to_overwrite(model):
    fails_unchanged(model, "init", model, *ARCH, match="--force")
    ok("init", model, *ARCH, "--force", "--policy", "frozen")
    pack = Pack.load(model)
    assert pack.tasks == [] and pack.policy == "frozen"
    assert pack.spec.kwargs == {"hidden": 32} and pack.spec.input_size == (1, 8, 8)


def test_init_unknown_arch(tmp_path):
    assert_error(invoke("init", tmp_path / "m.pt", "--arch", "no_such_net"), 1, "unknown arch")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["8x8", "1x0x8", "axbxc"])
def test_init_bad_input_size_is_usage_error(tmp_path, size):
    assert_error(invoke("init", tmp_path / "m.pt", "--arch", "mlp", "--input-size", size), 2)


def test_init_arch_that_does_not_fit_input(tmp_path):
    result = invoke("init", tmp_path / "m.pt", "--arch", "lenet", "--input-size", "1x2x2")
    assert_error(result, 1, "4x4")


def test_init_default_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    line = assert_error(invoke("init", tmp_path / "m.pt", "--arch", "mobilenet_v3_small",
                               "--input-size", "3x32x32", "--weights", "DEFAULT"), 1,
                        "downloads nothing")
    assert "--weights FILE" in line
    assert_error(invoke("init", tmp_path / "m.pt", *ARCH, "--weights", "DEFAULT"), 1,
                 "no pretrained torchvision weights")
    assert not (tmp_path / "m.pt").exists()


def test_init_default_weights_from_the_local_cache(tmp_path, monkeypatch):
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    net = torchvision.models.mobilenet_v3_small()
    torch.save(net.state_dict(), cached)
    ok("init", tmp_path / "m.pt", "--arch", "mobilenet_v3_small", "--input-size", "3x32x32",
       "--weights", "DEFAULT")
    pack = Pack.load(tmp_path / "m.pt")
    key = next(iter(pack.shared))
    assert torch.equal(pack.shared[key], net.state_dict()[key])


def test_init_missing_weights_file(tmp_path):
    assert_error(invoke("init", tmp_path / "m.pt", *ARCH, "--weights", tmp_path / "w.pt"), 1,
                 "does not exist")


# -- add-task -------------------------------------------------------------------------------------


def test_unknown_dataset(model):
    fails_unchanged(model, "add-task", model, "--data", "nope", "--prune", "0.5",
                    match="unknown dataset")


def test_registered_dataset_without_root(model, monkeypatch):
    monkeypatch.delenv("PACKTOOL_DATA", raising=False)
    fails_unchanged(model, "add-task", model, "--data", "cubs", "--prune", "0.5",
                    match="no data root: pass --data-root DIR or set PACKTOOL_DATA")


def test_empty_image_folder(model, tmp_path):
    for split in ("train", "val"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
    fails_unchanged(model, "add-task", model, "--data", tmp_path / "data", "--prune", "0.5",
                    match="no images")


def test_one_class_folder(model, tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / "data" / split / "cat" /
                                                          f"{i}.png")
    fails_unchanged(model, "add-task", model, "--data", tmp_path / "data", "--prune", "0.5",
                    *FAST, match="a task needs at least two classes to tell apart; the data "
                                 "has 1 (cat)")
    assert not (tmp_path / "model.pt.add-task.ckpt").exists()


def test_unreadable_images(model, tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}.png").write_bytes(b"not a png")
    fails_unchanged(model, "add-task", model, "--data", tmp_path / "data", "--prune", "0.5",
                    *FAST, match="cannot read image")


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1", "x"])
def test_prune_ratio_out_of_range(model, ratio):
    fails_unchanged(model, "add-task", model, "--data", "digits", "--prune", ratio, code=2,
                    match="--prune")


@pytest.mark.parametrize("args", [
    ("--prune", "auto", "--tolerance", "-1"), ("--prune", "auto", "--auto-trials", "0"),
    ("--prune", "0.5", "--reserve", "-1"), ("--prune", "nan"), ("--prune", "automatic"),
    ("--prune", "0.5", "--tolerance", "2"), ("--prune", "0.5", "--auto-trials", "2"),
])
def test_bad_planner_settings_are_usage_errors(model, args):
    fails_unchanged(model, "add-task", model, "--data", "digits", *args, code=2)


def test_bad_free_init_or_plan(tmp_path):
    assert_error(invoke("init", tmp_path / "m.pt", *ARCH, "--free-init", "random"), 2)
    for tasks in ("0", "256", "two"):
        assert_error(invoke("init", tmp_path / "m.pt", *ARCH, "--tasks", tasks), 2)
    assert not (tmp_path / "m.pt").exists()


def test_bad_forecast_share(model):
    fails_unchanged(model, "info", model, "--share", "0", code=2)


@pytest.mark.parametrize("classes", ["3-1", "1,1", "0,,1", "-2"])
def test_bad_classes_is_usage_error(model, classes):
    fails_unchanged(model, "add-task", model, *ADD, "--classes", classes, code=2)


def test_a_class_name_the_dataset_lacks_lists_its_classes(model):
    line = fails_unchanged(model, "add-task", model, *ADD, "--classes", "0,circle")
    assert "digits has no class 'circle'; its classes: 0, 1, 2" in line


def test_a_task_that_would_not_train_is_refused(model, tmp_path):
    """Both epoch counts 0 on a network without pretrained weights: exit 2, in flags."""
    untrained = ("--data", "digits", "--classes", "2,3", "--prune", "0.5", "--epochs", "0",
                 "--finetune-epochs", "0", "--device", "cpu")
    line = fails_unchanged(model, "add-task", model, *untrained, code=2)
    assert "would not train at all: --epochs and --finetune-epochs are both 0" in line
    fresh = init_model(tmp_path / "fresh.pt")
    fails_unchanged(fresh, "add-task", fresh, *untrained, code=2, match="would not train")
    # One fine-tuning epoch after pruning the initial weights is training.
    ok("add-task", fresh, *untrained[:-4], "--finetune-epochs", "1", "--device", "cpu")


def test_class_index_out_of_range(model):
    fails_unchanged(model, "add-task", model, *ADD, "--classes", "9,10", match="out of range")


def test_duplicate_task_name(model):
    fails_unchanged(model, "add-task", model, *ADD, "--classes", "0,1", match="already exists")
    fails_unchanged(model, "add-task", model, *ADD, "--task", "digits-0-1",
                    match="already exists")


def test_no_free_capacity(tmp_path):
    model = init_model(tmp_path / "model.pt")
    ok("add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0",
       "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu")
    line = fails_unchanged(model, "add-task", model, *ADD, match="no free weights")
    assert line == ("Error: no free weights are left for another task: every weight is owned "
                    "by the task (prune earlier tasks harder, or grow the network: --grow)")


def test_unavailable_device(model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    fails_unchanged(model, "add-task", model, *ADD, "--device", "cuda", match="CUDA")


def test_diverging_training(model):
    fails_unchanged(model, "add-task", model, *ADD, "--lr", "1e30", match="training diverged")


def test_lock_held_by_another_writer(model):
    with file_lock(model):
        fails_unchanged(model, "add-task", model, *ADD, match="in use by another")
        fails_unchanged(model, "init", model, *ARCH, "--force", match="in use by another")
    ok("add-task", model, *ADD, "--classes", "2,3", "--epochs", "1")  # released afterwards


def test_ctrl_c_during_training_leaves_model_untouched(model, monkeypatch):
    from packtool.cli import progress

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(progress.PlainProgress, "epoch_end", interrupt)
    before = sha256(model)
    result = invoke("add-task", model, *ADD, "--classes", "2,3")
    assert result.exit_code == 130
    assert result.stderr.strip() == (f"Error: interrupted; {model} was not changed; rerun with "
                                     "--resume to continue from the last completed epoch")
    assert "Traceback" not in result.output
    assert sha256(model) == before
    # The epoch reported done was checkpointed first: the resume says so and continues after it.
    assert sorted(p.name for p in model.parent.iterdir()) == [
        "model.pt", "model.pt.add-task.ckpt", "model.pt.lock"]
    with file_lock(model):  # the lock was released
        pass
    monkeypatch.undo()
    resumed = invoke("add-task", model, *ADD, "--classes", "2,3", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming task 'digits-2-3' after 1 of 2 training epochs" in resumed.stdout
    assert "Training epoch 1/2" not in resumed.stdout
    assert "Training epoch 2/2 done" in resumed.stdout


# -- eval, info, export, predict --------------------------------------------------------------


def test_unknown_task_lists_known_ones(model, tmp_path):
    line = fails_unchanged(model, "eval", model, "--task", "nope", match="unknown task")
    assert "digits-0-1" in line
    fails_unchanged(model, "export", model, "--task", "nope", "--out", tmp_path / "x.onnx",
                    match="known tasks: digits-0-1")
    assert not (tmp_path / "x.onnx").exists()


def test_eval_class_count_mismatch(model):
    fails_unchanged(model, "eval", model, "--task", "digits-0-1", "--data", "digits",
                    match="10 classes but task 'digits-0-1' has 2")
    assert ok("eval", model, "--data", "digits", "--classes", "2,3").exit_code == 0


def test_eval_usage_errors(model):
    fails_unchanged(model, "eval", model, "--all", "--task", "digits-0-1", code=2)
    fails_unchanged(model, "eval", model, "--classes", "0,1", code=2)


def test_eval_empty_model(tmp_path):
    model = init_model(tmp_path / "model.pt")
    fails_unchanged(model, "eval", model, match="no tasks")


@pytest.mark.parametrize("args", [
    (), ("--task", "digits-0-1", "--all"), ("--all",), ("--archive", "a", "--out", "b"),
    ("--all", "--out", "d", "--half"), ("--task", "digits-0-1", "--half", "--int8"),
    ("--archive", "a", "--int8"), ("--task", "digits-0-1", "--max-drop", "1"),
    ("--task", "digits-0-1", "--force"), ("--task", "digits-0-1", "--int8", "--max-drop", "-1"),
    ("--task", "digits-0-1", "--int8", "--max-drop", "nan"),
    ("--task", "digits-0-1", "--int8", "--dense"),
])
def test_export_usage_errors(model, args):
    fails_unchanged(model, "export", model, *args, code=2)


def test_export_never_overwrites_its_source(model, tmp_path):
    ok("add-task", model, *ADD, "--classes", "0,1", "--task", "zero-one")
    fails_unchanged(model, "export", model, "--task", "zero-one", "--out", model,
                    match="refusing to overwrite")
    fails_unchanged(model, "export", model, "--archive", model, match="refusing to overwrite")
    archive = tmp_path / "pack.safetensors"
    ok("export", model, "--archive", archive)
    before = sha256(archive)
    fails_unchanged(archive, "export", archive, "--all", "--out", tmp_path,
                    match="refusing to overwrite")
    assert sha256(archive) == before
    assert not list(tmp_path.glob("*.onnx"))  # refused before anything was written


def test_predict_errors(model, tmp_path):
    assert_error(invoke("predict", tmp_path / "missing.onnx", tmp_path / "x.png"), 1)
    assert_error(invoke("predict", tmp_path / "missing.onnx"), 2)
    # an image or a folder of none, named before the pack is exported
    (tmp_path / "no images").mkdir()
    for image, match in ((tmp_path / "x.png", "x.png does not exist"),
                         (tmp_path / "no images", "no images has no images (.jpg")):
        assert_error(invoke("predict", model, image, "--task", "digits-0-1"), 1, match=match)


def test_plot_to_unknown_format(model, tmp_path):
    pytest.importorskip("matplotlib")
    fails_unchanged(model, "info", model, "--plot", tmp_path / "c.xyz", match="cannot write")


def test_training_options_reach_the_library(model):
    ok("add-task", model, "--data", "digits", "--classes", "2-4", "--prune", "0.25",
       "--epochs", "1", "--finetune-epochs", "1", "--lr", "0.02", "--finetune-lr", "0.003",
       "--lr-decay-epochs", "0", "--optimizer", "adam", "--weight-decay", "0.01",
       "--batch-size", "16", "--seed", "3", "--val-fraction", "0.2", "--global-prune",
       "--device", "cpu", "--task", "custom")
    record = Pack.load(model).task("custom")
    assert record.prune == 0.25
    assert record.data == {"data": "digits", "root": None, "classes": [2, 3, 4],
                           "val_fraction": 0.2, "seed": 3}
    expected = {"epochs": 1, "finetune_epochs": 1, "lr": 0.02, "finetune_lr": 0.003,
                "lr_decay_epochs": 0, "optimizer": "adam", "weight_decay": 0.01,
                "batch_size": 16, "seed": 3, "prune_scope": "global", "device": "cpu"}
    assert {k: record.hparams[k] for k in expected} == expected


def test_version_and_help():
    from packtool import __version__

    assert ok("--version").stdout.strip() == f"packtool, version {__version__}"
    for command in ("init", "add-task", "eval", "info", "export", "predict"):
        assert "Usage:" in ok(command, "--help").stdout


# -- unexpected failures ------------------------------------------------------------------------


def test_internal_error_is_one_line_and_debug_shows_it(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(model_file, "load", broken)  # what every command reads a model with
    line = fails_unchanged(model, "info", model)
    assert line == ("Error: internal error: RuntimeError: boom second line "
                    "(run with --debug for the traceback)")
    result = invoke("--debug", "info", model)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_debug_reraises_user_errors(tmp_path):
    result = invoke("--debug", "info", tmp_path / "nope.pt")
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "PackToolError"


def test_os_errors_are_one_line(model, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    line = fails_unchanged(model, "export", model, "--all", "--out", tmp_path / "file" / "out")
    assert line == (f"Error: cannot write {tmp_path / 'file' / 'out' / 'digits-0-1.onnx'}: "
                    f"{tmp_path / 'file'} is not a directory")


def test_a_folder_is_no_file_to_write(model, tmp_path, monkeypatch):
    """An existing folder where a file is to be written is refused before any work, naming
    the folder (not a temporary file, after the export, as ``os.replace`` would)."""
    import packtool.cli.commands.export as export_command

    def no_work(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(export_command, "export_multi_task", no_work)
    folder = tmp_path / "folder"
    folder.mkdir()
    expected = f"Error: cannot write {folder}: it is a folder; give a file name"
    assert fails_unchanged(model, "export", model, "--multi-task", "--out", folder) == expected
    fails_unchanged(model, "export", model, "--archive", folder, code=2, match="is a directory")
    assert fails_unchanged(model, "init", folder, "--arch", "mlp", "--force") == expected
    assert list(folder.iterdir()) == []


def test_task_free_usage_errors(model, tmp_path):
    fails_unchanged(model, "eval", model, "--task-free", "--group", "0", code=2, match="--group")
    fails_unchanged(model, "eval", model, "--task-free", "--task-score", "loudest", code=2,
                    match="--task-score")
    fails_unchanged(model, "eval", model, "--task-free", "--all", code=2, match="--task-free")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    fails_unchanged(model, "predict", model, "--task-score", "loudest", "--task", "auto", image,
                    code=2, match="--task-score")
    fails_unchanged(model, "predict", model, "--same-task", image, code=2, match="--same-task")


@pytest.mark.slow
def test_task_auto_on_a_single_task_onnx(model, tmp_path):
    from PIL import Image

    onnx = tmp_path / "one.onnx"
    ok("export", model, "--task", "digits-0-1", "--out", onnx)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    fails_unchanged(model, "predict", onnx, "--task", "auto", image,
                    match="single task 'digits-0-1'")
    assert "Error" not in ok("predict", model, "--task", "auto", image).stderr


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_predict_on_several_tasks_without_a_task_is_a_usage_error(model, tmp_path):
    """A file of two tasks and no --task: exit 2 (the contract's usage error), naming the flag,
    for the model file and for the multi-task ONNX (which needs no torch to say so)."""
    ok("add-task", model, "--data", "digits", "--classes", "2,3", "--prune", "0",
       "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("L", (8, 8)).save(image)
    line = fails_unchanged(model, "predict", model, image, code=2, match="--task")
    assert "digits-0-1, digits-2-3" in line
    onnx = tmp_path / "all.onnx"
    ok("export", model, "--multi-task", "--out", onnx)
    fails_unchanged(model, "predict", onnx, image, code=2, match="--task")


def test_an_unwritable_out_fails_at_once_naming_the_target(model, tmp_path, monkeypatch):
    """Before any export work (none is started), with the target's name, not a temporary
    file's. (Tests run as root, which writes anywhere: the refusal is simulated.)"""
    import tempfile

    import packtool.cli.commands.export as export_command

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def no_work(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    monkeypatch.setattr(export_command, "export_onnx", no_work)
    monkeypatch.setattr(export_command, "export_all", no_work)
    target = tmp_path / "ro" / "t.onnx"
    target.parent.mkdir()
    line = fails_unchanged(model, "export", model, "--task", "digits-0-1", "--out", target)
    assert line == f"Error: cannot write {target}: Permission denied"
    line = fails_unchanged(model, "export", model, "--all", "--out", tmp_path / "ro" / "all")
    assert "cannot write" in line and str(tmp_path / "ro" / "all") in line


def test_library_names_are_said_as_flags():
    from packtool.cli.errors import FLAGS, as_flags
    from packtool.cli.main import main

    assert as_flags("give `lr` and `finetune_lr` to choose") == (
        "give --lr and --finetune-lr to choose")
    assert as_flags("pass `resume=True`, or `root=DIR`; `auto` stays") == (
        "pass --resume, or --data-root DIR; `auto` stays")
    assert as_flags("`max_size` needs `grow`") == "--max-size needs --grow"
    options = {o for command in main.commands.values() for p in command.params
               for o in getattr(p, "opts", ())}
    assert set(FLAGS.values()) <= options  # every flag named is one a command takes


def test_info_on_a_damaged_onnx_file_and_pack_options_on_one(tmp_path):
    """A file that starts like ONNX is read as one: damaged, one line from onnxruntime; the
    options that only a pack has are usage errors before anything is read."""
    damaged = tmp_path / "cut.onnx"
    damaged.write_bytes(b"\x08\x08\x12\x07pytorch")  # ir_version 8, then a cut-off string
    line = assert_error(invoke("info", damaged), 1, "onnxruntime cannot load")
    assert str(damaged) in line
    for option in (("--share", "0.1"), ("--plot", tmp_path / "c.png"), ("--growable",)):
        assert_error(invoke("info", damaged, *option), 2,
                     f"{option[0]} applies to a model.pt or an archive, not to an ONNX file")
    assert not (tmp_path / "c.png").exists()


def test_eval_after_the_images_moved_names_the_task_and_the_way_out(tmp_path):
    from test_data import write_folder

    write_folder(tmp_path / "photos", per_class=6)
    model = init_model(tmp_path / "model.pt")
    ok("add-task", model, "--data", tmp_path / "photos", "--task", "colors", "--prune", "0.5",
       *FAST)
    (tmp_path / "photos").rename(tmp_path / "moved")
    fails_unchanged(model, "eval", model,
                    match=f"task 'colors': {tmp_path / 'photos'} is not a folder")
    line = assert_error(invoke("eval", model), 1)
    assert line.endswith("if its images moved, give their place with --data and --task")
    doc = ok_json("eval", model, "--task", "colors", "--data", tmp_path / "moved")
    assert doc["tasks"][0]["samples"] == 12


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_predict_leaves_out_unreadable_images_only_when_asked(model, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.new("L", (8, 8), 120).save(folder / name)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    onnx = tmp_path / "t.onnx"
    ok("export", model, "--task", "digits-0-1", "--out", onnx)
    line = fails_unchanged(model, "predict", onnx, folder,
                           match=f"cannot read image {folder / 'b.png'}")
    assert line.endswith("(--skip-bad-images leaves such files out)")
    doc = ok_json("predict", onnx, folder, "--skip-bad-images")
    assert doc["skipped_files"] == [str(folder / "b.png")]
    assert [p["image"] for p in doc["predictions"]] == [str(folder / n) for n in ("a.png", "c.png")]
    assert ok_json("predict", model, "--task", "digits-0-1", folder, "--skip-bad-images") == doc
    text = ok("predict", onnx, folder, "--skip-bad-images").stdout
    assert f"Left out 1 unreadable image file: {folder / 'b.png'}" in text
    assert "skipped_files" not in ok_json("predict", onnx, folder / "a.png")
    fails_unchanged(model, "predict", onnx, folder / "b.png", "--skip-bad-images",
                    match="the image could not be read")
