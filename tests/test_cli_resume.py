"""Killed add-task runs through the CLI: MODEL intact, --resume ends where an uninterrupted run
ends (issue 7). Real processes, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from cli_helpers import assert_error, init_model, invoke, ok, sha256
from crash import assert_same_pack, forked

from packtool import Pack
from packtool.formats.checkpoint import Checkpoint, checkpoint_path

#: Real processes, wheels or long runs: the full suite runs them, the quick loop skips them.
pytestmark = pytest.mark.slow

# digits {0,1}: 9 batches of 32 per epoch. Adam with weight decay exercises the optimizer state
# a resumed run must restore.
ADD = ("add-task", "model.pt", "--data", "digits", "--classes", "0,1", "--prune", "0.5",
       "--epochs", "3", "--finetune-epochs", "2", "--lr", "0.01", "--optimizer", "adam",
       "--weight-decay", "0.001", "--device", "cpu")
STEPS_PER_EPOCH = 9


def killed(kill: str, *args: str, cwd: Path) -> int:
    """``packtool ARGS`` in a process SIGKILLed at ``kill`` (tests/crash.py); its exit code."""
    return forked(list(args), kill=kill, cwd=cwd)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ADD names model.pt relative to the working directory


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Pack:
    folder = tmp_path_factory.mktemp("reference")
    init_model(folder / "model.pt")
    assert forked(list(ADD), cwd=folder, out=folder / "out") == 0, (folder / "out.err").read_text()
    assert not checkpoint_path(folder / "model.pt").exists()  # removed once MODEL is saved
    return Pack.load(folder / "model.pt")


@pytest.mark.parametrize(("step", "phase", "epoch"), [
    (STEPS_PER_EPOCH + 4, "train", 1),          # mid training epoch 2
    (3 * STEPS_PER_EPOCH + 5, "finetune", 0),   # mid fine-tuning epoch 1
])
def test_sigkill_mid_epoch_then_resume(tmp_path, uninterrupted, step, phase, epoch):
    model = init_model(tmp_path / "model.pt")
    before = sha256(model)
    assert killed(f"step:{step}", *ADD, cwd=tmp_path) == -signal.SIGKILL
    assert sha256(model) == before
    Pack.load(model)  # still a valid pack
    saved = Checkpoint.load(checkpoint_path(model))
    assert (saved.phase, saved.epoch) == (phase, epoch)

    result = invoke(*ADD)  # without --resume: reported, not used
    assert_error(result, match="pass --resume")
    assert sha256(model) == before

    ok(*ADD, "--resume")
    assert not checkpoint_path(model).exists()
    assert_same_pack(Pack.load(model), uninterrupted)


def test_sigkill_while_saving_model(tmp_path, uninterrupted):
    model = init_model(tmp_path / "model.pt")
    before = sha256(model)
    assert killed("save:model.pt", *ADD, cwd=tmp_path) == -signal.SIGKILL
    assert sha256(model) == before  # the half-written bytes went to a temporary file
    Pack.load(model)
    ok(*ADD, "--resume")  # from the last checkpoint: the end of fine-tuning
    assert_same_pack(Pack.load(model), uninterrupted)


def test_restart_discards_the_checkpoint(tmp_path, uninterrupted):
    model = init_model(tmp_path / "model.pt")
    killed(f"step:{STEPS_PER_EPOCH + 2}", *ADD, cwd=tmp_path)
    assert checkpoint_path(model).exists()
    assert_error(invoke(*ADD, "--resume", "--restart"), code=2, match="not both")
    ok(*ADD, "--restart")
    assert not checkpoint_path(model).exists()
    assert_same_pack(Pack.load(model), uninterrupted)


def test_resume_refuses_another_run(tmp_path):
    model = init_model(tmp_path / "model.pt")
    killed(f"step:{STEPS_PER_EPOCH + 2}", *ADD, cwd=tmp_path)
    before, ckpt = sha256(model), checkpoint_path(model).read_bytes()
    other = [a if a != "0.5" else "0.75" for a in ADD]
    assert_error(invoke(*other, "--resume"), match="prune differ")
    assert sha256(model) == before and checkpoint_path(model).read_bytes() == ckpt


def test_checkpoint_of_a_finished_task_is_dropped(tmp_path, uninterrupted):
    """Killed after saving MODEL but before deleting the checkpoint: the next task proceeds."""
    model = init_model(tmp_path / "model.pt")
    ok(*ADD)
    finished = tmp_path / "kept.ckpt"
    killed(f"step:{STEPS_PER_EPOCH + 2}", *ADD[:2], "--data", "digits", "--classes", "0,1",
           "--prune", "0.5", "--epochs", "3", "--device", "cpu", "--task", "again",
           "--finetune-epochs", "0", cwd=tmp_path)
    # Make the leftover one of task 1 (already in MODEL) rather than of the killed run.
    leftover = Checkpoint.load(checkpoint_path(model))
    leftover.identity = {**leftover.identity, "task": "digits-0-1", "index": 1}
    leftover.save(finished)
    os.replace(finished, checkpoint_path(model))
    ok(*ADD[:2], "--data", "digits", "--classes", "2,3", "--prune", "0.5", "--epochs", "1",
       "--finetune-epochs", "0", "--device", "cpu")
    assert Pack.load(model).task_names == ["digits-0-1", "digits-2-3"]
    assert not checkpoint_path(model).exists()
