"""Inputs of none of the tasks (issue 29): thresholds fitted on validation, rejection in
Python, in the multi-task ONNX's metadata and in the CLI."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from cli_helpers import ARCH, FAST, assert_error, invoke, ok, ok_json
from conftest import build_pack, synthetic_task
from PIL import Image

from packtool import TrainConfig
from packtool.data import (
    ImageTransform,
    Preprocess,
    load_task_data,
    read_image,
    unknown_images,
)
from packtool.data.digits import read_digits
from packtool.errors import DataError, TaskError
from packtool.exporters import multi_task_onnx, tasks_metadata
from packtool.identification import evaluate_unknown, score_unknown, split_logits
from packtool.task_id import auroc, reject_ratios
from packtool.taskfree import (
    ACCEPT,
    distance_terms,
    feature_distance,
    fit_feature_stats,
    fit_reject_distance,
    task_free_net,
)

FORMATS = Path(__file__).parent / "formats"

CONFIG = TrainConfig(epochs=3, finetune_epochs=1, lr=0.01, device="cpu")
N = 600  # 100 validation and 100 test images per task
KNOWN = [(3, 0.5), (3, 0.5), (3, 0.5)]


@pytest.fixture(scope="module")
def pack():
    return build_pack("mlp", (1, 8, 8), {"hidden": 64}, KNOWN, n=N, config=CONFIG)


def _table(pack):
    nets = [task_free_net(pack, t.name) for t in pack.tasks]
    table = [split_logits(nets, synthetic_task(c, seed=i, n=N).test, r.name, r.index)
             for i, ((c, _), r) in enumerate(zip(KNOWN, pack.tasks))]
    return nets, table


def test_a_task_left_out_is_rejected_and_known_images_at_about_the_fitted_share(pack):
    nets, table = _table(pack)
    outside = split_logits(nets, synthetic_task(3, seed=7, n=N).test, "unknown", 0)
    result = score_unknown(table, outside, [float(t.feature_stats["reject"])
                                            for t in pack.tasks])
    print(result)
    assert result.samples == 100 and result.known_samples == 300
    assert result.rejected >= 0.8 and result.auroc >= 0.9
    # Fitted to accept 95% of each task's validation images: about 5% of test images rejected.
    assert 0.0 <= result.known_rejected <= 0.15
    assert set(result.known_rejected_by_task) == set(pack.task_names)
    # The public entry point gives the same with the table given.
    again = evaluate_unknown(pack, synthetic_task(3, seed=7, n=N).test, table=table,
                             device="cpu")
    assert again == result


def test_the_threshold_accepts_its_share_of_validation_cross_fitted():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    features = torch.randn(400, 8, generator=g) + 3 * torch.eye(8)[labels]
    threshold = fit_reject_distance(features, labels)
    fresh = torch.randn(4000, 8, generator=g) + 3 * torch.eye(8)[torch.arange(4000) % 4]
    stats = fit_feature_stats(features, labels)
    accepted = float((feature_distance(fresh, **distance_terms(stats)) <= threshold)
                     .double().mean())
    assert abs(accepted - ACCEPT) < 0.03
    with pytest.raises(ValueError, match="accept"):
        fit_reject_distance(features, labels, accept=1.0)


def test_a_small_validation_split_is_left_out_one_image_at_a_time():
    """Eight validation images (fewer than two per fold): scored in-sample, the threshold
    would reject nearly every new image of the task; left out one at a time, most pass."""
    def draw(means: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        labels = torch.arange(n) % 2
        return means[labels] + torch.randn(n, 16, generator=g), labels

    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        means = 3 * torch.randn(2, 16, generator=g)
        (features, labels), (fresh, _) = draw(means, 8, g), draw(means, 400, g)
        terms = distance_terms(fit_feature_stats(features, labels))
        in_sample = float(torch.quantile(feature_distance(features, **terms).double(), ACCEPT))
        distances = feature_distance(fresh, **terms)
        assert float((distances > in_sample).double().mean()) > 0.9
        assert float((distances > fit_reject_distance(features, labels)).double().mean()) < 0.2


def test_the_multi_task_onnx_records_the_thresholds(pack):
    model = multi_task_onnx(pack)
    props = {p.key: p.value for p in model.metadata_props}
    metas = tasks_metadata(props)
    assert [m.reject_distance for m in metas] == [float(t.feature_stats["reject"])
                                                  for t in pack.tasks]
    # The file's distances and thresholds reject as the pack does.
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = synthetic_task(3, seed=7, n=N).test.tensors[0].numpy()
    distances = [sess.run(None, {"input": x, "task": np.array([k])})[1]
                 for k in range(1, len(pack.tasks) + 1)]
    chosen = np.stack(distances, 1).argmin(1)
    ours = reject_ratios(distances, chosen, [m.reject_distance for m in metas])
    nets = [task_free_net(pack, t.name) for t in pack.tasks]
    outside = split_logits(nets, synthetic_task(3, seed=7, n=N).test, "unknown", 0)
    theirs = reject_ratios([d.numpy() for d in outside.distances], chosen,
                           [m.reject_distance for m in metas])
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)


def test_ratios_need_every_threshold_and_auroc_counts_ties_half():
    with pytest.raises(TaskError, match="task #2 has no rejection threshold"):
        reject_ratios([np.ones(2), np.ones(2)], np.array([0, 1]), [1.0, None])
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([2.0]), np.array([1.0, 3.0])) == 0.5


def test_a_pack_without_thresholds_cannot_reject(pack):
    older = copy.deepcopy(pack)
    del older.tasks[1].feature_stats["reject"]
    with pytest.raises(TaskError, match="'task 2' has no rejection threshold"):
        evaluate_unknown(older, synthetic_task(3, seed=7, n=N).test, device="cpu")


# ------------------------------------------------------------------------------------------------
# Through the command line, on digits: {8, 9} is none of the tasks
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    model = tmp_path_factory.mktemp("reject") / "model.pt"
    ok("init", model, *ARCH)
    for classes in ("0,1", "2,3", "4,5"):
        ok_json("add-task", model, "--data", "digits", "--classes", classes, "--prune", "0.5",
                *FAST)
    return model


def _digit_pngs(folder, digit: int, count: int) -> list:
    images, labels = read_digits()
    paths = []
    for k, i in enumerate(np.flatnonzero(labels == digit)[-count:]):  # the last: test images
        paths.append(folder / f"{digit}-{k}.png")
        Image.fromarray((images[i] * 255 / 16).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.mark.slow
def test_eval_unknown_and_predict_reject_from_the_command_line(digits_model, tmp_path):
    doc = ok_json("eval", digits_model, "--task-free", "--unknown", "digits", "--classes", "8,9")
    unknown = doc["unknown"]
    assert set(unknown) == {"data", "samples", "known_samples", "auroc", "rejected",
                            "known_rejected", "known_rejected_by_task"}
    # Structure and agreement only: how well digits tell {8, 9} from the tasks' digits is the
    # benchmark's to measure (a two-epoch MLP does poorly; generated data above does well).
    assert unknown["data"] == "digits" and unknown["samples"] > 0
    assert 0 <= unknown["auroc"] <= 1 and 0 <= unknown["rejected"] <= 1
    text = ok("eval", digits_model, "--task-free", "--unknown", "digits", "--classes",
              "8,9").stdout
    assert "Unknown images (digits" in text and "AUROC" in text
    outside, inside = _digit_pngs(tmp_path, 8, 6), _digit_pngs(tmp_path, 0, 6)
    archive = tmp_path / "pack.safetensors"
    multi = tmp_path / "pack.onnx"
    ok("export", digits_model, "--archive", archive)
    ok("export", digits_model, "--multi-task", "--out", multi)
    answers = []
    for source in (digits_model, archive, multi):
        pred = ok_json("predict", source, "--task", "auto", "--reject", *outside, *inside)
        items = pred["predictions"]
        assert all(set(p) == {"image", "top", "task", "task_margin", "distance",
                                "reject_ratio"}
                   for p in items)
        for p in items:
            assert (p["task"] is None) == (p["reject_ratio"] > 1)
            assert (p["top"] == []) == (p["task"] is None)
        answers.append([(p["task"], round(p["reject_ratio"], 4)) for p in items])
    assert answers[0] == answers[1] == answers[2]
    text = ok("predict", multi, "--task", "auto", "--reject", *outside, *inside).stdout
    rejected = sum(task is None for task, _ in answers[0])
    assert text.count("none of the tasks") == rejected
    # A plain folder of images (no train/ split) is unknown images as they are
    plain = ok_json("eval", digits_model, "--task-free", "--unknown", tmp_path)["unknown"]
    assert plain["samples"] == len(outside) + len(inside) and plain["data"] == str(tmp_path)


def test_unknown_images_from_a_folder_without_a_split(tmp_path):
    """Every image below a folder without train/ (any layout), read as a test split is; a
    dataset or task folder gives its test split; a plain folder has no classes to choose."""
    (tmp_path / "mixed" / "sub").mkdir(parents=True)
    paths = _digit_pngs(tmp_path / "mixed", 8, 3) + _digit_pngs(tmp_path / "mixed" / "sub", 9, 2)
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    pre = Preprocess((1, 8, 8), (0.5,), (0.5,))
    images = unknown_images(str(tmp_path / "mixed"), pre)
    assert len(images) == 5
    transform = ImageTransform(pre)
    for k, path in enumerate(sorted(paths)):
        x, _ = images[k]
        assert torch.equal(x, transform(read_image(path)))
    test = unknown_images("digits", pre, classes="8,9")
    assert len(test) == len(load_task_data("digits", pre, classes="8,9").test)
    with pytest.raises(DataError, match="no classes to choose from"):
        unknown_images(str(tmp_path / "mixed"), pre, classes="0")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="has no images"):
        unknown_images(str(tmp_path / "none"), pre)


@pytest.mark.parametrize("args,match", [
    (["--task", "auto", "--reject", "--same-task"], "--reject needs --task auto"),
    (["--reject"], "--reject needs --task auto"),
    (["--task", "auto", "--reject", "--task-score", "entropy"], "mahalanobis"),
])
def test_predict_reject_usage_errors(tmp_path, args, match):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    model = tmp_path / "m.pt"
    ok("init", model, *ARCH)
    assert_error(invoke("predict", model, *args, image), 2, match)


def test_eval_unknown_usage_errors(tmp_path):
    model = tmp_path / "m.pt"
    ok("init", model, *ARCH)
    assert_error(invoke("eval", model, "--unknown", "digits"), 2, "--unknown needs --task-free")


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
@pytest.mark.parametrize("fixture", ["lenet-calibrated-v3.pt", "lenet-calibrated-v3.safetensors"])
def test_a_file_written_before_thresholds_cannot_reject_from_the_command_line(tmp_path, fixture):
    """A model file or archive calibrated before rejection thresholds: one line, exit 1,
    the file unchanged; without --reject it still serves task-free."""
    source = tmp_path / fixture
    shutil.copy(FORMATS / fixture, source)
    before = source.read_bytes()
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert_error(invoke("predict", source, "--task", "auto", "--reject", image), 1,
                 "has no rejection threshold")
    assert ok_json("predict", source, "--task", "auto", image)["predictions"][0]["task"]
    if source.suffix == ".pt":
        assert_error(invoke("eval", source, "--task-free", "--unknown", "digits", "--classes",
                            "8,9"), 1, "has no rejection threshold")
    assert source.read_bytes() == before
