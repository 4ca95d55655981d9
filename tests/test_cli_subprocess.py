"""Real processes: ``python -m packtool`` exit statuses and stderr without tracebacks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import ARCH, init_model, sha256

from packtool.fileio import file_lock


def run(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "packtool", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_python_m_packtool_exit_statuses(tmp_path):
    # From a folder outside the repository: the installed package maps packtool.cli.
    done = run("info", cwd=tmp_path)  # MODEL defaults to ./model.pt
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: model.pt does not exist (create it with `packtool init`)"
    ]
    assert done.stdout == ""

    done = run("add-task", "--data", "digits", "--prune", "1.5", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Usage: packtool add-task" in done.stderr


def test_lock_held_by_another_process(tmp_path):
    model = init_model(tmp_path / "model.pt")
    before = sha256(model)
    with file_lock(model):
        done = run("add-task", "--data", "digits", "--prune", "0.5", "--epochs", "1",
                   cwd=tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: model.pt is in use by another packtool process")
    assert sha256(model) == before


@pytest.mark.skipif(shutil.which("packtool", path=str(Path(sys.executable).parent)) is None,
                    reason="console script not installed")
def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "packtool"
    done = subprocess.run([script, "init", *ARCH], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.pt").is_file()
    assert "\x1b[" not in done.stdout


def test_ctrl_c_during_training(tmp_path):
    """A real SIGINT mid-training: exit 130, one line, model.pt byte-identical, and the
    checkpoint of the last completed epoch left for --resume (no temporary files)."""
    model = init_model(tmp_path / "model.pt")
    before = sha256(model)
    proc = subprocess.Popen(
        [sys.executable, "-m", "packtool", "add-task", "--data", "digits", "--classes", "0,1",
         "--prune", "0.5", "--epochs", "100000", "--device", "cpu"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell may start background jobs with SIGINT ignored; Ctrl-C reaches a foreground one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Training epoch 2/"):  # epoch 1's checkpoint is written
                break
        proc.send_signal(signal.SIGINT)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert stderr.splitlines() == [
        "Error: interrupted; model.pt was not changed; rerun with --resume to continue from the "
        "last completed epoch"
    ]
    assert sha256(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt", "model.pt.add-task.ckpt", "model.pt.lock"]
