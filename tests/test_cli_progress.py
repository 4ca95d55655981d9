"""Progress for a person (issue 30): every long command says what it does, on stderr with
``--json`` (stdout keeps only the document), in flags, and nothing with ``--quiet``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import FAST, init_model, invoke, ok
from PIL import Image


def _json_and_progress(*args) -> tuple[dict, list[str]]:
    result = ok(*args, "--json")
    return json.loads(result.stdout), result.stderr.splitlines()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = init_model(tmp_path_factory.mktemp("progress") / "model.pt")
    ok("add-task", path, "--data", "digits", "--classes", "0,1", "--prune", "0.5", *FAST)
    return path


def test_add_task_reports_on_stderr_with_json(tmp_path):
    model = init_model(tmp_path / "model.pt")
    doc, lines = _json_and_progress("add-task", model, "--data", "digits", "--classes", "0,1",
                                    "--prune", "0.5", "--epochs", "2", "--finetune-epochs", "1",
                                    "--device", "cpu")
    assert doc["task"] == "digits-0-1"
    assert "Training epoch 2/2 done" in "\n".join(lines)
    assert any(line.startswith("pruning: releasing 0.5") for line in lines)
    assert lines[-1] == f"saving {model}"
    # The library's names are said as flags.
    assert any("give --lr and --finetune-lr to choose" in line for line in lines)
    assert not any("`" in line for line in lines)


def test_quiet_says_nothing(tmp_path, model):
    fresh = init_model(tmp_path / "fresh.pt")
    result = ok("add-task", fresh, "--data", "digits", "--classes", "0,1", "--prune", "0.5",
                *FAST, "--quiet", "--json")
    assert result.stderr == "" and json.loads(result.stdout)["task"] == "digits-0-1"
    result = ok("add-task", tmp_path / "fresh.pt", "--data", "digits", "--classes", "2,3",
                "--prune", "0.5", *FAST, "-q")
    assert result.stderr == "" and "Training" not in result.stdout  # the summary table only
    assert "digits-2-3" in result.stdout
    out = tmp_path / "quiet.onnx"
    result = ok("export", model, "--task", "digits-0-1", "--out", out, "--quiet")
    assert result.stderr == "" and out.is_file()


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_export_reports_each_step(model, tmp_path):
    doc, lines = _json_and_progress("export", model, "--task", "digits-0-1", "--out",
                                    tmp_path / "t.onnx")
    assert doc["files"][0]["task"] == "digits-0-1"
    assert "task 'digits-0-1': exporting to ONNX (opset 18)" in lines
    assert "task 'digits-0-1': checking onnxruntime's outputs against PyTorch's" in lines
    _, lines = _json_and_progress("export", model, "--all", "--out", tmp_path / "all")
    assert lines[-1] == f"writing the archive {tmp_path / 'all' / 'pack.safetensors'}"
    _, lines = _json_and_progress("export", model, "--multi-task", "--out", tmp_path / "m.onnx")
    assert "exporting 1 tasks to one ONNX graph (opset 18)" in lines


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_int8_calibration_is_reported(tmp_path):
    model = tmp_path / "lenet.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "1x8x8")
    ok("add-task", model, "--data", "digits", "--classes", "0-4", "--prune", "0.5", *FAST)
    _, lines = _json_and_progress("export", model, "--task", "digits-0to4", "--int8", "--force",
                                  "--out", tmp_path / "q.onnx")
    assert any(line.startswith("task 'digits-0to4': calibrating int8 on ") for line in lines)
    assert any("measuring the int8 file on" in line for line in lines)


def test_predict_reports_its_batches(model, tmp_path):
    ok("export", model, "--task", "digits-0-1", "--out", tmp_path / "t.onnx", "-q")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    doc, lines = _json_and_progress("predict", tmp_path / "t.onnx", image)
    assert len(doc["predictions"]) == 1
    assert lines[-1] == "classified 1/1 images"
    _, lines = _json_and_progress("predict", model, "--task", "digits-0-1", image)
    assert lines[0] == f"{model}: exporting task 'digits-0-1' to ONNX in memory"
    result = invoke("predict", tmp_path / "t.onnx", image, "--quiet")
    assert result.exit_code == 0 and result.stderr == ""



def test_eval_reports_each_task(model):
    doc, lines = _json_and_progress("eval", model)
    assert doc["tasks"][0]["task"] == "digits-0-1"
    assert lines == [f"task 'digits-0-1': evaluating on {doc['tasks'][0]['samples']} test images"]
    _, lines = _json_and_progress("eval", model, "--task-free")
    assert lines[0].startswith("task 'digits-0-1': its ")
    assert invoke("eval", model, "--quiet").stderr == ""
