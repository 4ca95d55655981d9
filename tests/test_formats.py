"""Files written by earlier packtools keep loading: the fixtures in ``tests/formats/`` were
written by packtool 0.1.0 (model file, checkpoint and archive format 1; see make_v1.py) and at
commit cb09c2d (model file and archive format 2; make_v2.py), and with formats 3 (make_v3.py) and
4 (the archive, make_v4.py; the model file of a grown network, make_grown_v4.py); a checkpoint
inside a --prune auto search as written before trials stopped at the target
(make_search_v1.py); a multi-task ONNX taking one task per call (make_multitask_v1.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from formats import make_search_v1 as search_v1
from formats.make_v1 import CONFIG, Task
from PIL import Image

from packtool import Pack, TaskError, add_task, load
from packtool.exporters import export_multi_task, onnx_info, predict, read_archive
from packtool.formats.checkpoint import Checkpoint
from packtool.method import Phase

FORMATS = Path(__file__).parent / "formats"
X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _assert_saves_unchanged(name: str, version: int, tmp_path) -> None:
    """Loading and saving fixture ``name`` keeps its version, digest and metadata."""
    Pack.load(FORMATS / name).save(tmp_path / "again.pt")
    old = torch.load(FORMATS / name, weights_only=True)
    new = torch.load(tmp_path / "again.pt", weights_only=True)
    assert new["version"] == old["version"] == version
    assert new["digest"] == old["digest"] and new["meta"] == old["meta"]


def _assert_same_outputs(pack: Pack, archive: Pack) -> None:
    expected = _outputs(pack)
    for name, out in _outputs(archive).items():
        assert torch.equal(out, expected[name])


def _outputs(pack: Pack) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: pack.model_for(name)(X) for name in pack.task_names}


def test_v1_model_file_and_archive_serve_the_same_tasks():
    pack = Pack.load(FORMATS / "lenet-2tasks.pt")
    archive = read_archive(FORMATS / "lenet-2tasks.safetensors")
    assert pack.task_names == archive.task_names == ["first", "second"]
    _assert_same_outputs(pack, archive)
    assert pack.tasks[0].metrics["accuracy"] == archive.tasks[0].metrics["accuracy"]


def test_v1_checkpoint_resumes_to_the_recorded_result(tmp_path):
    model = tmp_path / "lenet-1task.pt"
    shutil.copy(FORMATS / "lenet-1task.pt", model)
    ckpt = tmp_path / "lenet-1task.pt.add-task.ckpt"
    shutil.copy(FORMATS / ckpt.name, ckpt)
    assert Checkpoint.load(ckpt).phase == "finetune"
    pack = Pack.load(model)
    pack, _ = add_task(pack, "second", Task(3, seed=1), 0.5, CONFIG, checkpoint=ckpt, resume=True)
    done = Pack.load(FORMATS / "lenet-2tasks.pt")
    for key in done.shared:
        assert torch.equal(pack.shared[key], done.shared[key])
        assert torch.equal(pack.owners[key], done.owners[key])


def test_v1_transformer_keeps_its_split_and_takes_tasks():
    """0.1.0 packed only convolutions and Linear; its packs keep that split when loaded."""
    pack = Pack.load(FORMATS / "transformer-init.pt")
    assert "encoder.layers.0.self_attn.in_proj_weight" in pack.private_state_spec
    assert "encoder.layers.0.self_attn.out_proj.weight" in pack.shared
    pack, _ = add_task(pack, "a", Task(2, seed=0), 0.5, CONFIG)  # 0.1.0 failed here (out_proj)
    x = X[:2]
    with torch.no_grad():
        first = pack.model_for("a")(x)
    pack, _ = add_task(pack, "b", Task(3, seed=1), 0.5, CONFIG)
    with torch.no_grad():
        assert torch.equal(pack.model_for("a")(x), first)
    net = pack.network(2, Phase.EVAL, head=pack.tasks[1].head, private=pack.tasks[1].private)
    assert net(x).shape == (2, 3)


@pytest.mark.parametrize("name", ["lenet-2tasks.pt", "lenet-1task.pt", "transformer-init.pt"])
def test_v1_model_files_save_again_unchanged(name, tmp_path):
    """Same content, same digest (the bytes of torch.save may differ between torch releases)."""
    Pack.load(FORMATS / name).save(tmp_path / name)
    old = torch.load(FORMATS / name, weights_only=True)
    new = torch.load(tmp_path / name, weights_only=True)
    assert new["digest"] == old["digest"] and new["meta"] == old["meta"]


@pytest.mark.slow
def test_v1_archive_predicts_with_the_whole_image_resized(tmp_path):
    """Files written before the resize-and-crop recipe carry none: images are resized whole."""
    import numpy as np
    from PIL import Image

    from packtool.exporters import TaskMetadata, predict, task_onnx

    image = tmp_path / "digit.png"
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12)).save(image)
    archive = read_archive(FORMATS / "lenet-2tasks.safetensors")
    meta = TaskMetadata.from_props(
        {p.key: p.value for p in task_onnx(archive, "second").metadata_props})
    assert meta.resize is None
    result = predict(FORMATS / "lenet-2tasks.safetensors", [image], task="second", top=1)
    with torch.no_grad():
        probs = torch.softmax(archive.model_for("second")(
            torch.from_numpy(archive.preprocess.load_image(image))[None]), 1)[0]
    best = result.predictions[0]["top"][0]
    assert abs(best["probability"] - float(probs.max())) < 1e-4


def test_v2_model_file_and_archive_keep_the_planner_record_and_save_unchanged(tmp_path):
    """Format 2 (cb09c2d, make_v2.py): a task whose ratio the planner chose."""
    pack = Pack.load(FORMATS / "lenet-auto-v2.pt")
    archive = read_archive(FORMATS / "lenet-auto-v2.safetensors")
    assert pack.tasks[0].prune_search and pack.tasks[0].prune_reason != "fixed"
    assert archive.tasks[0].prune_search == pack.tasks[0].prune_search
    _assert_same_outputs(pack, archive)
    _assert_saves_unchanged("lenet-auto-v2.pt", 2, tmp_path)


@pytest.mark.slow
def test_files_without_temperatures_serve_task_free_at_temperature_1(tmp_path):
    """Formats 1 and 2 have no temperatures: every task counts as 1, and info says so."""
    import numpy as np
    from cli_helpers import ok
    from PIL import Image

    from packtool.exporters import predict
    from packtool.taskfree import temperatures_of

    for name in ("lenet-2tasks.pt", "lenet-2tasks.safetensors", "lenet-auto-v2.pt"):
        pack = load(FORMATS / name)
        assert [t.temperature for t in pack.tasks] == [None, None]
        assert temperatures_of(pack) == [1.0, 1.0]
    image = tmp_path / "x.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(image)
    result = predict(FORMATS / "lenet-2tasks.safetensors", [image], task="auto")
    assert result.predictions[0]["task"] in ("first", "second")
    assert result.task_score == "entropy"  # no feature statistics: the confidence score
    with pytest.raises(TaskError, match="no feature statistics"):
        predict(FORMATS / "lenet-2tasks.safetensors", [image], task="auto",
                task_score="mahalanobis")
    text = ok("info", FORMATS / "lenet-auto-v2.pt").stdout
    assert "1 (not calibrated)" in text and "temperature 1" in text


def test_v3_model_file_and_archive_keep_their_temperatures_and_save_unchanged(tmp_path):
    """Format 3 (make_v3.py): calibrated tasks."""
    pack = Pack.load(FORMATS / "lenet-calibrated-v3.pt")
    archive = read_archive(FORMATS / "lenet-calibrated-v3.safetensors")
    temperatures = [t.temperature for t in pack.tasks]
    assert all(isinstance(t, float) and t > 0 for t in temperatures)
    assert [t.temperature for t in archive.tasks] == temperatures
    for a, b in zip(archive.tasks, pack.tasks):
        assert b.feature_stats.keys() == {"means", "basis", "scale"}
        assert all(torch.equal(a.feature_stats[k], v) for k, v in b.feature_stats.items())
    _assert_same_outputs(pack, archive)
    _assert_saves_unchanged("lenet-calibrated-v3.pt", 3, tmp_path)


def test_v4_archive_serves_what_its_model_file_serves():
    """Archive format 4 (make_v4.py): the owner index ANS-coded; formats 1-3 stay readable."""
    from safetensors import safe_open

    with safe_open(str(FORMATS / "lenet-calibrated-v4.safetensors"), "pt") as f:
        assert f.metadata()["format_version"] == "4"
    pack = Pack.load(FORMATS / "lenet-calibrated-v3.pt")
    archive = read_archive(FORMATS / "lenet-calibrated-v4.safetensors")
    for key in pack.owners:
        assert torch.equal(archive.owners[key], pack.owners[key])
    _assert_same_outputs(pack, archive)
    older = read_archive(FORMATS / "lenet-calibrated-v3.safetensors")  # bit-packed owners
    assert all(torch.equal(older.owners[k], archive.owners[k]) for k in pack.owners)


def test_a_search_checkpoint_resumes_to_the_recorded_result(tmp_path):
    """A checkpoint written inside a --prune auto search before trials stopped at the target
    (make_search_v1.py) keeps a finished passing trial; it resumes to what its run wrote."""
    model = tmp_path / "mlp16.pt"
    shutil.copy(FORMATS / "mlp16.pt", model)
    ckpt = tmp_path / "mlp16.pt.search.ckpt"
    shutil.copy(FORMATS / ckpt.name, ckpt)
    assert Checkpoint.load(ckpt).search["done"]  # a trial finished before the interruption
    pack = Pack.load(model)
    pack, result = add_task(pack, "digits", search_v1.digits(pack), "auto", search_v1.CONFIG,
                            **search_v1.SEARCH, checkpoint=ckpt, resume=True)
    done = Pack.load(FORMATS / "mlp16-searched.pt")
    assert pack.tasks[0].prune_search == done.tasks[0].prune_search
    assert result.prune == done.tasks[0].prune
    for key in done.shared:
        assert torch.equal(pack.shared[key], done.shared[key])
        assert torch.equal(pack.owners[key], done.owners[key])


def test_v4_grown_model_file_serves_each_task_at_its_widths(tmp_path):
    pack = Pack.load(FORMATS / "lenet-grown-v4.pt")
    assert pack.task("first").widths == {}
    assert pack.task("second").widths == pack.widths == {"0.0": 6, "0.4": 15, "2": 750}
    expected = torch.load(FORMATS / "lenet-grown-v4.outputs.pt", weights_only=True)
    for name, out in _outputs(pack).items():  # stored once: another thread count may differ
        torch.testing.assert_close(out, expected[name], rtol=0, atol=1e-6)  # in the last bits
    _assert_saves_unchanged("lenet-grown-v4.pt", 4, tmp_path)


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_a_multi_task_onnx_of_one_task_per_call_still_serves(tmp_path):
    """Files written before mixed-task batches take ``task`` ``[1]``: predict reads them, for a
    named task and for auto, as it reads a file of today."""
    old = FORMATS / "lenet-multitask-v1.onnx"
    new = tmp_path / "new.onnx"
    export_multi_task(load(FORMATS / "lenet-calibrated-v3.pt"), new)
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(images[-1])
    for task in (*load(FORMATS / "lenet-calibrated-v3.pt").task_names, "auto"):
        ours, theirs = (predict(f, images, task=task).to_dict() for f in (new, old))
        for a, b in zip(ours["predictions"], theirs["predictions"]):
            assert a.get("task") == b.get("task")
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            for x, y in zip(a["top"], b["top"]):
                assert abs(x["probability"] - y["probability"]) < 1e-5


def test_info_reads_a_multi_task_onnx_of_one_task_per_call():
    """The same file, as ``packtool info`` reads it: every task, no mixed batches (the files
    of then took one task per call) and no model file recorded (they did not record it)."""
    pack = load(FORMATS / "lenet-calibrated-v3.pt")
    doc = onnx_info(FORMATS / "lenet-multitask-v1.onnx").to_dict()
    assert doc["kind"] == "multi-task" and doc["precision"] == "float32"
    assert (doc["mixed_batches"], doc["task_free"]) == (False, True)
    assert [t["task"] for t in doc["tasks"]] == pack.task_names
    assert [t["classes"] for t in doc["tasks"]] == [list(r.classes) for r in pack.tasks]
