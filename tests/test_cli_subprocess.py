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

#: Real processes, wheels or long runs: the full suite runs them, the quick loop skips them.
pytestmark = pytest.mark.slow


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


class _Payload:
    """Unpickling this would create the marker file: proof that nothing was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_hostile_files_give_one_line_in_a_real_process(tmp_path):
    """What a user sees on a terminal: warnings of torch or onnxruntime would show here (in
    process, pytest captures them), so each case must print exactly one line and run nothing."""
    import pickle

    marker = tmp_path / "PAYLOAD-RAN"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    (tmp_path / "garbage.onnx").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "short.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "image.png")
    cases = {
        ("info", "evil.pt"): "evil.pt is not a packtool model file",
        ("init", "new.pt", *ARCH, "--weights", "evil.pt"): "evil.pt is not a state_dict file",
        ("predict", "garbage.onnx", "image.png"): "onnxruntime cannot load garbage.onnx",
        ("info", "short.safetensors"): "short.safetensors is not a packtool",
    }
    for args, message in cases.items():
        done = run(*args, cwd=tmp_path)
        assert done.returncode == 1, (args, done.stderr)
        [line] = done.stderr.splitlines()  # exactly one line: no warning before it
        assert line.startswith("Error: ") and message in line, (args, line)
    assert not marker.exists()
    assert not (tmp_path / "new.pt").exists()
