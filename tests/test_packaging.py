"""The built wheel: packtool.cli and packtool.exporters inside, no top-level cli/exporters."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    assert version.returncode == 0 and "0.1.0" in version.stdout
    helped = subprocess.run([scripts / "packtool", "--help"], **run)
    assert helped.returncode == 0, helped.stderr
    for command in ("init", "add-task", "eval", "info", "export", "predict"):
        assert command in helped.stdout
