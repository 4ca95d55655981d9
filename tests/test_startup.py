"""Start-up and the torch-free runtime (issue 25): each command imports only what it uses.

A command runs in a subprocess where importing the packages it must not need raises
(``sys.modules[name] = None``), so the test fails the moment any import path reaches them.
Timings and memory are measured in ``benchmarks/startup.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import ok
from PIL import Image

import packtool
import packtool.data
import packtool.exporters
from packtool import Pack
from packtool.choices import DATASET_NAMES
from packtool.data import DATASETS, task_data

TRAINING_STACK = ("torch", "torchvision", "onnx", "onnxscript", "sklearn", "scipy")
EXPORT_STACK = ("onnx", "onnxscript", "onnxruntime")


def blocked(modules: tuple[str, ...], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``packtool ARGS`` in a fresh process in which importing any of ``modules`` fails; the
    names of the modules it imported are written to ``cwd/imported.json`` when it exits."""
    code = ("import atexit, json, sys\n"
            f"for name in {modules!r}:\n"
            "    sys.modules[name] = None\n"
            "atexit.register(lambda: open('imported.json', 'w').write(json.dumps(\n"
            "    sorted(m for m, v in sys.modules.items() if v is not None))))\n"
            "from packtool.cli.main import main\n"
            "main(prog_name='packtool')\n")
    env = {k: v for k, v in os.environ.items() if k != "PACKTOOL_DEBUG"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_version_and_usage_errors_need_no_torch(tmp_path):
    for args in (["--help"], ["--version"], ["add-task", "--help"], ["predict", "--help"]):
        done = blocked((*TRAINING_STACK, *EXPORT_STACK, "numpy", "PIL"), *args,
                       cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout
    assert packtool.__version__ in blocked(TRAINING_STACK, "--version", cwd=tmp_path).stdout
    usage = blocked((*TRAINING_STACK, *EXPORT_STACK), "add-task", "--prune", "2", cwd=tmp_path)
    assert usage.returncode == 2 and "Usage: packtool add-task" in usage.stderr
    assert "Traceback" not in usage.stderr


def test_a_bad_plan_is_refused_before_torch_loads(tmp_path):
    """``run`` reads and checks the whole plan (TrainConfig's checks included) first: a typo in
    a plan costs a fraction of a second, not the training stack's import."""
    (tmp_path / "plan.toml").write_text('[network]\narch = "mlp"\n[defaults]\nlr = -1\n'
                                        '[[tasks]]\nname = "a"\ndata = "digits"\nprune = 0\n')
    done = blocked(TRAINING_STACK, "run", "plan.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: plan.toml task 1: learning rates must be > 0"]
    imported = json.loads((tmp_path / "imported.json").read_text())
    assert "packtool.plan" in imported and "packtool.sequence" not in imported


def test_a_command_that_needs_the_training_stack_says_so(tmp_path):
    done = blocked(("torch",), "info", "model.pt", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: this command needs torch, which is not installed here (an install for serving "
        "has onnxruntime, numpy and Pillow only); `pip install packtool` brings everything"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two tasks on a folder of non-square JPEGs (ResNet-like input: 3x32x32 cropped from the
    shorter side at 36), exported per task and as one multi-task file."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    folders = []
    for t, (w, h) in enumerate([(47, 33), (29, 41)]):
        folder = root / f"data{t}"
        for split, n in (("train", 40), ("test", 12)):
            for label in range(2):
                target = folder / split / f"c{label}"
                target.mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 90, (h, w, 3))
                    # task 0: the left half bright in channel `label`; task 1: the top half in
                    # channel `label + 1`
                    if t == 0:
                        pixels[:, : w // 2, label] += 150
                    else:
                        pixels[: h // 2, :, label + 1] += 150
                    Image.fromarray(pixels.astype(np.uint8)).save(target / f"{i}.jpg",
                                                                  quality=90)
        folders.append(folder)
    model = root / "model.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "3x32x32")
    for t, folder in enumerate(folders):
        ok("add-task", model, "--data", folder, "--task", f"t{t}", "--prune", "0.5",
           "--epochs", "2", "--finetune-epochs", "1", "--device", "cpu")
    ok("export", model, "--task", "t1", "--out", root / "t1.onnx")
    ok("export", model, "--multi-task", "--out", root / "all.onnx")
    return root, model, folders


def _torch_path(pack: Pack, task: str) -> tuple[list[Path], torch.Tensor]:
    """The test split's files and what ``packtool eval`` computes on them: softmax [N, C]."""
    test = task_data(pack, task).test
    paths = [test.source.base / test.source.paths[i] for i in test.indices]
    x = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        return paths, torch.softmax(pack.model_for(task)(x).double(), 1)


def _predict_blocked(root: Path, *args: str) -> dict:
    done = blocked(TRAINING_STACK, "predict", *args, "--json", "--top", "2", cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
@pytest.mark.parametrize("source", ["t1.onnx", "all.onnx"])
def test_predict_on_onnx_needs_no_torch_and_agrees_with_eval(served, source):
    root, model, _ = served
    pack = Pack.load(model)
    paths, probs = _torch_path(pack, "t1")
    task = [] if source == "t1.onnx" else ["--task", "t1"]
    doc = _predict_blocked(root, source, *map(str, paths), *task)
    assert doc["task"] == "t1"
    classes = pack.task("t1").classes
    for item, p in zip(doc["predictions"], probs, strict=True):
        top = item["top"][0]
        assert top["class"] == classes[int(p.argmax())]  # the same class on every image
        for entry in item["top"]:
            assert abs(entry["probability"] - float(p[classes.index(entry["class"])])) <= 1e-4


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_predict_auto_on_a_multi_task_file_needs_no_torch(served):
    root, model, _ = served
    pack = Pack.load(model)
    paths = []
    for task in ("t0", "t1"):
        paths += _torch_path(pack, task)[0][:4]
    doc = _predict_blocked(root, "all.onnx", *map(str, paths), "--task", "auto")
    assert doc["task_score"] == "mahalanobis"
    assert [p["task"] for p in doc["predictions"]] == ["t0"] * 4 + ["t1"] * 4


@pytest.mark.slow
def test_training_and_inspection_never_load_onnx(served, tmp_path):
    _, _, folders = served
    model = tmp_path / "model.pt"
    for args in (["init", model, "--arch", "lenet", "--input-size", "3x32x32"],
                 ["add-task", model, "--data", folders[0], "--prune", "0.5", "--epochs", "1",
                  "--finetune-epochs", "0", "--device", "cpu"],
                 ["eval", model, "--device", "cpu"], ["info", model]):
        done = blocked(EXPORT_STACK, *map(str, args), cwd=tmp_path)
        assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_torchvision_free_task_stays_torchvision_free(tmp_path):
    """A built-in network on digits: no torchvision, scikit-learn or SciPy is imported (the
    digits file is read from scikit-learn's folder, so that one is looked for, not blocked)."""
    model = tmp_path / "model.pt"
    for args in (["init", model, "--arch", "lenet", "--input-size", "1x8x8"],
                 ["add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0.5",
                  "--epochs", "1", "--finetune-epochs", "0", "--device", "cpu"],
                 ["eval", model, "--device", "cpu"], ["info", model]):
        done = blocked(("torchvision", "scipy", *EXPORT_STACK), *map(str, args), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        imported = json.loads((tmp_path / "imported.json").read_text())
        assert not [m for m in imported if m.split(".")[0] == "sklearn"]


@pytest.mark.parametrize("package", [packtool, packtool.data, packtool.exporters])
def test_lazy_names_never_shadow_a_submodule(package):
    """A submodule imported later would replace a lazily bound name of the same spelling."""
    folder = Path(package.__file__).parent
    submodules = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
    assert not (set(package.__all__) & submodules)


def test_dataset_names_are_the_registry_s():
    assert tuple(DATASETS) == DATASET_NAMES


@pytest.mark.slow
@pytest.mark.parametrize("source", ["t1.onnx", "all.onnx"])
def test_info_on_onnx_needs_no_torch_and_says_what_the_pack_recorded(served, source):
    root, model, _ = served
    pack = Pack.load(model)
    done = blocked(TRAINING_STACK, "info", source, "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    names = ["t1"] if source == "t1.onnx" else ["t0", "t1"]
    multi = source == "all.onnx"
    assert doc["kind"] == ("multi-task" if multi else "per-task")
    assert doc["precision"] == "float32" and doc["bytes"] == (root / source).stat().st_size
    assert doc["input_size"] == list(pack.spec.input_size) == [3, 32, 32]
    assert doc["mean"] == list(pack.spec.mean) and doc["std"] == list(pack.spec.std)
    assert doc["task_free"] == doc["mixed_batches"] == multi
    assert [t["task"] for t in doc["tasks"]] == names
    for row in doc["tasks"]:
        record = pack.task(row["task"])
        assert row["classes"] == list(record.classes) == ["c0", "c1"]
        assert row["temperature"] == record.temperature
        assert row["resize"] == record.data.get("resize")
        assert (row["reject_distance"] is None) == (not multi)
    text = blocked(TRAINING_STACK, "info", source, cwd=root)
    assert text.returncode == 0 and f"{source}: {doc['kind']} ONNX, float32" in text.stdout
