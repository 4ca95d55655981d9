"""The built wheel: packtool.cli and packtool.exporters inside, no top-level cli/exporters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from cli_helpers import ARCH, FAST, ok
from PIL import Image

#: Real processes, wheels or long runs: the full suite runs them, the quick loop skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: The version the package declares, read from its one source (not typed here).
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (ROOT / "packtool" / "_version.py").read_text())[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (path,) = out.glob("packtool-*.whl")
    return path


def test_wheel_has_no_top_level_cli_or_exporters(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if "/" in n and ".dist-info" not in n}
    assert tops == {"packtool"}
    assert "packtool/cli/main.py" in names
    assert "packtool/exporters/__init__.py" in names


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # Reach the dependencies (torch, ...) of the running interpreter through a plain path
    # entry: it does not run that site's .pth files, so the editable install stays invisible.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    scripts = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    where = subprocess.run([python, "-c", "import packtool, packtool.cli, packtool.exporters;"
                            "print(packtool.__file__)"], **run)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(site))
    version = subprocess.run([python, "-m", "packtool", "--version"], **run)
    assert version.returncode == 0 and VERSION in version.stdout
    helped = subprocess.run([scripts / "packtool", "--help"], **run)
    assert helped.returncode == 0, helped.stderr
    for command in ("init", "add-task", "eval", "info", "export", "predict"):
        assert command in helped.stdout


#: What a serving machine installs beside ``pip install --no-deps packtool`` (README,
#: "Deploying"): onnxruntime (and what it imports), numpy, Pillow, click and rich.
SERVING = ("onnxruntime", "numpy", "numpy.libs", "PIL", "pillow.libs", "flatbuffers", "google",
           "packaging", "click", "rich", "markdown_it", "mdurl", "pygments")


def test_a_serving_install_without_torch_predicts(wheel, tmp_path):
    """The wheel with only the serving packages (no torch, torchvision or onnx on the path at
    all): predict and info on an ONNX file work, and a training command says what it needs."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    deps = tmp_path / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for name in SERVING:
        (deps / name).symlink_to(here / name)
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(f"{deps}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert subprocess.run([python, "-c", "import torch"], **run).returncode != 0

    # An exported task and an image, made here with the full install.
    model, onnx = tmp_path / "model.pt", tmp_path / "task.onnx"
    ok("init", model, *ARCH)
    ok("add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0.5", *FAST)
    ok("export", model, "--task", "digits-0-1", "--out", onnx)
    Image.new("L", (8, 8), 200).save(tmp_path / "x.png")

    packtool = env_dir / "bin" / "packtool"
    served = subprocess.run([packtool, "predict", onnx, "x.png", "--json"], **run)
    assert served.returncode == 0, served.stderr
    assert '"task": "digits-0-1"' in served.stdout
    described = subprocess.run([packtool, "info", onnx, "--json"], **run)
    assert described.returncode == 0, described.stderr
    assert '"classes": [\n        "0",\n        "1"\n      ]' in described.stdout
    refused = subprocess.run([packtool, "info", model], **run)
    assert refused.returncode == 1
    assert refused.stderr.startswith("Error: this command needs torch, which is not installed")
