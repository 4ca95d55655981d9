"""End to end through the command line only: init, three tasks on digits, eval, info, export,
predict (issue 4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import ARCH, FAST, invoke, ok, ok_json
from PIL import Image

from packtool.method import release_count

TASKS = [("0,1", 0.6, "digits-0-1"), ("2,3", 0.3, "digits-2-3"), ("4-6", 0.0, "digits-4to6")]
LAYER_WEIGHTS = 32 * 64 + 32 * 32  # mlp hidden=32 on 1x8x8: Linear(64, 32), Linear(32, 32)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A model.pt with three digits tasks, and what add-task reported for each."""
    folder = tmp_path_factory.mktemp("cli")
    model = folder / "model.pt"
    created = ok("init", model, *ARCH)
    assert "Created" in created.stdout
    reports = []
    for classes, prune, _ in TASKS:
        reports.append(ok_json("add-task", model, "--data", "digits", "--classes", classes,
                               "--prune", prune, *FAST))
    return model, reports


def test_add_task_reports_contract_keys_and_default_names(packed):
    _, reports = packed
    keys = {"task", "index", "accuracy", "accuracy_before_prune", "accuracy_after_prune",
            "weights_owned", "free_fraction", "seconds", "prune", "prune_reason",
            "skipped_images", "skipped_files", "temperature"}
    for k, (report, (_, prune, name)) in enumerate(zip(reports, TASKS), start=1):
        assert set(report) == keys  # prune_search only with --prune auto
        assert report["task"] == name and report["index"] == k
        assert report["prune"] == float(prune) and report["prune_reason"] == "fixed"
        assert 0.05 <= report["temperature"] <= 20  # calibrated on validation
        for key in ("accuracy", "accuracy_before_prune", "accuracy_after_prune"):
            assert 0.0 <= report[key] <= 1.0
    assert reports[0]["accuracy"] > 0.5  # two digits are easy even after two epochs


def test_eval_all_reports_exactly_what_add_task_reported(packed):
    model, reports = packed
    doc = ok_json("eval", model, "--all")
    assert set(doc) == {"tasks"}
    assert [set(row) for row in doc["tasks"]] == [{"task", "index", "accuracy", "samples"}] * 3
    assert [row["task"] for row in doc["tasks"]] == [r["task"] for r in reports]
    assert [row["accuracy"] for row in doc["tasks"]] == [r["accuracy"] for r in reports]
    one = ok_json("eval", model, "--task", "digits-2-3")
    assert one["tasks"] == [doc["tasks"][1]]
    assert ok_json("eval", model) == doc  # --all is the default


def test_info_counts_follow_the_prune_ratios(packed):
    model, reports = packed
    doc = ok_json("info", model)
    assert set(doc) == {"arch", "input_size", "prunable_weights", "free_fraction", "tasks",
                        "private_values", "private_share", "private_tensors", "capacity",
                        "forecast", "free_init", "planned_tasks"}
    assert doc["planned_tasks"] is None
    assert doc["arch"] == "mlp" and doc["input_size"] == [1, 8, 8]
    assert doc["prunable_weights"] == LAYER_WEIGHTS
    assert doc["private_values"] == 32 + 32  # the hidden layers' biases
    assert doc["private_share"] == 64 / (64 + LAYER_WEIGHTS) and doc["private_tensors"] == []
    free = {"1": 32 * 64, "3": 32 * 32}  # per layer, exact counts: round(ratio * free) released
    for row, (_, prune, name), report in zip(doc["tasks"], TASKS, reports):
        assert set(row) == {"task", "index", "classes", "weights_owned", "private_values",
                            "data", "prune", "prune_reason", "prune_search", "temperature"}
        assert row["prune"] == prune and row["prune_reason"] == "fixed"
        assert row["temperature"] == report["temperature"]
        assert row["prune_search"] == []
        classes = len(row["classes"])
        assert row["private_values"] == 64 + 32 * classes + classes  # + its head
        owned = 0
        for (layer, n_free), capacity in zip(free.items(), doc["capacity"], strict=True):
            released = release_count(n_free, prune)
            owned += n_free - released
            free[layer] = released
            assert capacity["owned"][row["index"] - 1] == n_free - released
        assert row["task"] == name
        assert row["weights_owned"] == owned == report["weights_owned"]
        assert row["data"]["data"] == "digits"
        assert len(row["classes"]) == len(row["data"]["classes"])
    assert doc["free_fraction"] == sum(free.values()) / LAYER_WEIGHTS == 0.0
    assert reports[-1]["free_fraction"] == doc["free_fraction"]
    assert doc["tasks"][2]["classes"] == ["4", "5", "6"]


def test_tables_are_plain_when_piped(packed):
    model, _ = packed
    for command in ("info", "eval"):
        result = ok(command, model)
        assert "\x1b[" not in result.output
        assert "digits-4to6" in result.stdout
    assert "Capacity per layer" in ok("info", model).stdout


def test_info_capacity_names_each_layer_by_shape_in_text_and_json(packed):
    model, _ = packed
    info = ok_json("info", model)
    capacity = info["capacity"]  # the table's numbers, with each layer's shape
    assert [layer["layer"] for layer in capacity] == [
        layer["layer"] for layer in info["forecast"]["layers"]]
    for layer in capacity:
        assert math.prod(layer["shape"]) == layer["weights"] == layer["free"] + sum(layer["owned"])
        assert len(layer["owned"]) == len(info["tasks"])
    assert [sum(layer["owned"][k] for layer in capacity) for k in range(len(info["tasks"]))] == [
        t["weights_owned"] for t in info["tasks"]]
    table = ok("info", model).stdout.split("Capacity per layer")[1]
    first = capacity[0]
    row = next(line for line in table.splitlines()
               if line.startswith("| " + first["layer"].removesuffix(".weight") + " "))
    assert "x".join(map(str, first["shape"])) in row and f"{first['weights']:,}" in row


def test_model_defaults_to_model_pt_in_cwd(packed, monkeypatch):
    model, _ = packed
    monkeypatch.chdir(model.parent)
    assert [t["task"] for t in ok_json("info")["tasks"]] == [t[2] for t in TASKS]


def _png(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint8)).resize((32, 32)).save(path)


@pytest.mark.slow
def test_export_every_task_and_predict(packed, tmp_path):
    model, reports = packed
    before = model.read_bytes()
    doc = ok_json("export", model, "--all", "--out", tmp_path / "onnx")
    assert set(doc) == {"files", "archive"}
    assert [f["task"] for f in doc["files"]] == [t[2] for t in TASKS]
    for f in doc["files"]:
        assert set(f) == {"task", "path", "bytes", "max_abs_diff"}
        assert f["max_abs_diff"] is not None and f["max_abs_diff"] < 1e-4
    assert set(doc["archive"]) == {"path", "bytes"}

    single = ok_json("export", model, "--task", "digits-0-1", "--out", tmp_path / "t.onnx")
    assert [f["path"] for f in single["files"]] == [str(tmp_path / "t.onnx")]
    assert single["archive"] is None
    assert model.read_bytes() == before

    image = tmp_path / "digit.png"
    _png(image, np.eye(8) * 255)
    pred = ok_json("predict", tmp_path / "t.onnx", image, "--top", "2")
    assert set(pred) == {"task", "provider", "predictions"}
    assert pred["task"] == "digits-0-1"
    [item] = pred["predictions"]
    assert set(item) == {"image", "top"}
    probs = [p["probability"] for p in item["top"]]
    assert len(probs) == 2 and probs == sorted(probs, reverse=True)
    assert {p["class"] for p in item["top"]} == {"0", "1"}

    text = ok("predict", doc["archive"]["path"], "--task", "digits-4to6", image).stdout
    assert "digits-4to6" in text

    # The archive serves every task exactly as model.pt does.
    from_archive = ok_json("eval", doc["archive"]["path"])["tasks"]
    assert [row["accuracy"] for row in from_archive] == [r["accuracy"] for r in reports]


@pytest.mark.slow
def test_export_archive_then_from_archive(packed, tmp_path):
    model, _ = packed
    archive = tmp_path / "pack.archive"
    doc = ok_json("export", model, "--archive", archive, "--half")
    assert doc["files"] == [] and doc["archive"]["path"] == str(archive)
    again = ok_json("export", archive, "--task", "digits-2-3", "--out", tmp_path / "a.onnx",
                    "--no-verify")
    assert again["files"][0]["task"] == "digits-2-3"


@pytest.mark.slow
def test_default_onnx_name_is_the_task(packed, tmp_path, monkeypatch):
    model, _ = packed
    monkeypatch.chdir(tmp_path)
    ok("export", model, "--task", "digits-0-1", "--dense")
    assert (tmp_path / "digits-0-1.onnx").is_file()
    (tmp_path / "out").mkdir()  # a folder as --out: the task's file in it
    doc = ok_json("export", model, "--task", "digits-2-3", "--dense", "--out", "out")
    assert [f["path"] for f in doc["files"]] == [str(Path("out") / "digits-2-3.onnx")]
    assert (tmp_path / "out" / "digits-2-3.onnx").is_file()


@pytest.mark.slow
def test_plots(packed, tmp_path):
    pytest.importorskip("matplotlib")
    model, reports = packed
    ok("info", model, "--plot", tmp_path / "capacity.png")
    doc = json.loads(ok("eval", model, "--plot", tmp_path / "acc.png", "--json").stdout)
    assert len(doc["tasks"]) == 3
    # The Python API draws the same charts; add-task's reports give three bars per task.
    from packtool.report import plot_accuracy

    plot_accuracy(reports, tmp_path / "phases.svg")
    assert (tmp_path / "phases.svg").read_text().count("<svg") == 1
    for name in ("capacity.png", "acc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clean_error(packed, tmp_path, monkeypatch):
    model, _ = packed
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    result = invoke("info", model, "--plot", tmp_path / "c.png")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: matplotlib is not installed: pip install 'packtool[plot]'"
    )
    assert not (tmp_path / "c.png").exists()


def test_half_archive_reports_each_tasks_accuracy_change(packed, tmp_path):
    model, reports = packed
    full = ok_json("export", model, "--archive", tmp_path / "full.safetensors")
    assert "half_precision" not in full["archive"]
    doc = ok_json("export", model, "--archive", tmp_path / "half.safetensors", "--half")
    assert doc["archive"]["bytes"] < full["archive"]["bytes"]  # tiny: the header dominates
    changes = doc["archive"]["half_precision"]
    assert [c["task"] for c in changes] == [r["task"] for r in reports]
    evaluated = ok_json("eval", model, "--all")["tasks"]
    half_eval = ok_json("eval", tmp_path / "half.safetensors", "--all")["tasks"]
    for change, row, half_row in zip(changes, evaluated, half_eval):
        assert set(change) == {"task", "accuracy", "accuracy_half", "samples", "max_abs_diff"}
        # Measured on the task's own test split: the float32 figure is eval's, the float16
        # figure is eval's of the archive.
        assert change["accuracy"] == row["accuracy"] and change["samples"] == row["samples"]
        assert change["accuracy_half"] == half_row["accuracy"]
        assert abs(change["accuracy_half"] - change["accuracy"]) <= 0.05
        assert 0.0 < change["max_abs_diff"] < 0.05
    table = ok("export", model, "--archive", tmp_path / "half2.safetensors", "--half").stdout
    assert "float16 archive against float32" in table and "pts" in table


def test_data_root_needs_half(packed, tmp_path):
    model, _ = packed
    result = invoke("export", model, "--data-root", tmp_path, "--archive", tmp_path / "x")
    assert result.exit_code == 2
    assert "--data-root applies to --half and --int8 only" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_add_task_auto_reports_its_search_and_info_its_forecast(tmp_path):
    model = tmp_path / "model.pt"
    ok("init", model, *ARCH)
    doc = ok_json("add-task", model, "--data", "digits", "--classes", "0-4", "--prune", "auto",
                  "--tolerance", "2", "--auto-trials", "2", "--reserve", "1", *FAST)
    assert doc["prune_reason"] in ("tolerance", "reserve") and doc["prune"] >= 0.5  # reserve 1
    search = doc["prune_search"]
    assert [c["ratio"] for c in search] == sorted(c["ratio"] for c in search)
    assert set(search[0]) == {"ratio", "val_pruned", "val_finetuned"}
    assert sum(c["val_finetuned"] is not None for c in search) <= 2
    assert any(c["ratio"] == doc["prune"] and c["val_finetuned"] is not None for c in search)
    # 72 validation images know accuracy to a few points, coarser than the 2-point tolerance.
    assert doc["prune_warning"].startswith(f"the validation split ({72} images")
    info = ok_json("info", model, "--share", "0.1")
    task = info["tasks"][0]
    assert task["prune"] == doc["prune"] and task["prune_search"] == search
    forecast = info["forecast"]
    assert forecast["share"] == 0.1 and forecast["tasks_fit_at_share"] >= 4
    assert forecast["median_share"] == pytest.approx(1 - info["free_fraction"])
    assert [layer["layer"] for layer in forecast["layers"]] == ["1.weight", "3.weight"]
    text = ok("info", model, "--share", "0.1").stdout
    assert "Forecast:" in text and "(--share)" in text
    table = ok("add-task", model, "--data", "digits", "--classes", "5-9", "--prune", "auto",
               *FAST).stdout
    assert "Prune search (validation accuracy)" in table and "chosen" in table
    assert "Note: the validation split (" in table and "noise-limited" in table
    assert "Tip: --prune auto weighed this task alone" in table  # no --reserve given
    told = ok("add-task", model, "--data", "digits", "--classes", "0,9", "--prune", "auto",
              "--reserve", "1", *FAST).stdout
    assert "Prune search" in told and "Tip:" not in told
    planned = tmp_path / "planned.pt"
    assert "planned for 2 tasks" in ok("init", planned, *ARCH, "--tasks", "2").stdout
    first = ok("add-task", planned, "--data", "digits", "--classes", "0-4", "--prune", "auto",
               *FAST).stdout
    assert "Tip:" not in first  # the plan reserved for the second task
    assert ok_json("info", planned)["tasks"][0]["prune"] >= 0.5
    assert ok_json("info", planned)["planned_tasks"] == 2
    assert "Planned: 2 tasks (init --tasks), 1 still to come." in ok("info", planned).stdout
    for classes in ("5-7", "8,9"):
        past = ok("add-task", planned, "--data", "digits", "--classes", classes, "--prune",
                  "0.5", *FAST).stdout
    assert ("task 3 is past the plan of 2 tasks (init --tasks): it keeps no room for more "
            "(--reserve does)") in past
    assert "Planned: 2 tasks (init --tasks), 3 added, 1 past the plan." in ok(
        "info", planned).stdout


@pytest.mark.slow
def test_eval_task_free_and_predict_auto(packed, tmp_path):
    """Issue 15 through the command line: eval --task-free (per image and per group) and
    predict --task auto from model.pt and its archive."""
    model, reports = packed
    doc = ok_json("eval", model, "--task-free", "--group", "4")
    assert set(doc) == {"group", "task_score", "uncalibrated", "tasks", "mean"}
    assert doc["group"] == 4 and doc["task_score"] == "mahalanobis" and doc["uncalibrated"] == []
    for row, report in zip(doc["tasks"], reports):
        assert set(row) == {"task", "index", "samples", "groups", "task_accuracy", "accuracy",
                            "oracle_accuracy"}
        assert row["task"] == report["task"] and row["oracle_accuracy"] == report["accuracy"]
        assert row["groups"] == -(-row["samples"] // 4)
        assert row["accuracy"] <= min(row["oracle_accuracy"], row["task_accuracy"]) + 1e-12
    text = ok("eval", model, "--task-free", "--task-score", "max-prob").stdout
    assert "task identified" in text and "mean" in text and "max-prob" in text

    archive = tmp_path / "pack.safetensors"
    ok("export", model, "--archive", archive)
    images = []
    for i in range(3):
        images.append(tmp_path / f"d{i}.png")
        _png(images[-1], np.roll(np.eye(8), i, 1) * 255)
    for source in (model, archive):
        pred = ok_json("predict", source, "--task", "auto", *images, "--top", "1")
        assert set(pred) == {"task", "provider", "predictions", "task_score"}
        assert pred["task"] is None
        for item in pred["predictions"]:
            assert set(item) == {"image", "top", "task", "task_margin"}
            assert item["task"] in [t[2] for t in TASKS] and item["task_margin"] >= 0
    group = ok_json("predict", archive, "--task", "auto", "--same-task", *images)
    assert group["task"] in [t[2] for t in TASKS]
    assert {item["task"] for item in group["predictions"]} == {group["task"]}
    assert "margin" in ok("predict", archive, "--task", "auto", images[0]).stdout
