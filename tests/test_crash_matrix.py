"""The crash matrix (issue 24): an add-task killed with SIGKILL at every point a run can be
killed, under every data-loading setting, resumes to exactly the uninterrupted run: the model
file's tensors and metrics, and the ``--json`` document less ``seconds``.

Runs are ``packtool`` commands in processes forked from this one (tests/crash.py), killed at
counted points (optimizer steps, prunings, checkpoint writes), never after a sleep. The data is
an image folder that the default ``--workers auto`` reads with loader worker processes (more
than ``SMALL_DATASET`` training images, random crops and flips, so ``--cache auto`` keeps them
prepared but not finished), and a copy of it with one unreadable file for
``--skip-bad-images``.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from crash import alive, assert_same_pack, forked
from PIL import Image

from packtool import Pack
from packtool.config import SMALL_DATASET
from packtool.formats.checkpoint import checkpoint_path

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 200, 20
BATCH = 32
TRAIN_IMAGES = math.ceil(CLASSES * TRAIN_PER_CLASS * 0.9)  # after the 10% validation carve
STEPS = math.ceil(TRAIN_IMAGES / BATCH)  # optimizer steps per epoch
EPOCHS, FINETUNE = 2, 2

#: The data-loading settings of the matrix: name -> (extra flags, folder with a bad file).
SETTINGS = {
    "workers-0": (["--workers", "0"], False),
    "workers-2-no-cache": (["--workers", "2", "--cache", "none"], False),
    "defaults-skip-bad": (["--skip-bad-images"], True),  # --workers auto, --cache auto
}


def _folder(root: Path, bad: bool) -> Path:
    """Three classes of 32x32 gray images: a class-specific stripe pattern plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            pattern = np.zeros((32, 32))
            pattern[:, label * 10:label * 10 + 8] = 120
            for i in range(n):
                pixels = np.clip(pattern + rng.normal(90, 50, (32, 32)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"{i}.png")
    if bad:
        (root / "train" / "class0" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[bool, Path]:
    base = tmp_path_factory.mktemp("data")
    return {bad: _folder(base / ("bad" if bad else "good"), bad) for bad in (False, True)}


def _init(model: Path) -> None:
    assert forked(["init", str(model), "--arch", "lenet", "--input-size", "1x32x32",
                   "--kwarg", "width=4"]) == 0


def _args(model: Path, folder: Path, setting: str, prune: str) -> list[str]:
    flags, _ = SETTINGS[setting]
    extra = ["--auto-trials", "3", "--tolerance", "0.5"] if prune == "auto" else []
    return ["add-task", str(model), "--data", str(folder), "--prune", prune, *extra,
            "--epochs", str(EPOCHS), "--finetune-epochs", str(FINETUNE), "--lr", "0.02",
            "--finetune-lr", "0.01", "--batch-size", str(BATCH), "--device", "cpu", "--seed", "3",
            "--json", *flags]


class Reference:
    """An uninterrupted run: its model file, its ``--json`` document and its trace."""

    def __init__(self, root: Path, folder: Path, setting: str, prune: str) -> None:
        root.mkdir()
        self.model, self.out, self.trace = root / "model.pt", root / "out.json", root / "trace"
        _init(self.model)
        code = forked(_args(self.model, folder, setting, prune), out=self.out, trace=self.trace)
        assert code == 0, Path(f"{self.out}.err").read_text()
        self.events = [(e, int(n)) for e, n in
                       (line.split() for line in self.trace.read_text().splitlines())]

    def steps_at(self, event: str, nth: int = 1) -> int:
        return [n for e, n in self.events if e == event][nth - 1]


_references: dict[tuple[str, str], Reference] = {}


@pytest.fixture
def reference(folders, tmp_path_factory):
    def get(setting: str, prune: str) -> Reference:
        key = (setting, prune)
        if key not in _references:
            root = tmp_path_factory.mktemp("ref") / f"{setting}-{prune}"
            _references[key] = Reference(root, folders[SETTINGS[setting][1]], setting, prune)
        return _references[key]
    return get


def _document(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("seconds")
    return doc


def _kill_and_resume(tmp_path: Path, folder: Path, setting: str, prune: str, kill: str,
                     ref: Reference) -> None:
    model, killed_out = tmp_path / "model.pt", tmp_path / "killed.json"
    _init(model)
    before = model.read_bytes()
    args = _args(model, folder, setting, prune)
    assert forked(args, kill=kill, out=killed_out) == -9
    assert model.read_bytes() == before  # MODEL only changes at the very end
    workers = [int(p) for p in Path(f"{killed_out}.children").read_text().split()]
    uses_workers = setting != "workers-0"
    assert bool(workers) == uses_workers, workers  # `auto` started workers on this folder
    # Right away, while the killed run's loader workers may still be alive: the lock is free.
    resumed = tmp_path / "resumed.json"
    code = forked([*args, "--resume"], out=resumed)
    for pid in workers:  # orphans exit by themselves within seconds; do not wait for them
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert code == 0, Path(f"{resumed}.err").read_text()
    assert not checkpoint_path(model).exists()
    assert _document(resumed) == _document(ref.out)
    assert_same_pack(Pack.load(model), Pack.load(ref.model))


def test_the_default_settings_start_loader_workers_here():
    """The `auto` cell must really exercise worker processes (see the module docstring; each
    cell also checks that the killed run had child processes)."""
    assert TRAIN_IMAGES > SMALL_DATASET


@pytest.mark.slow
def test_neither_workers_nor_the_cache_change_the_result(reference):
    """Same seed, same result, however the data is read (packtool.data.sampling)."""
    alone, workers = reference("workers-0", "0.5"), reference("workers-2-no-cache", "0.5")
    assert _document(alone.out) == _document(workers.out)
    assert_same_pack(Pack.load(alone.model), Pack.load(workers.model))


def _cells(points: dict, fast: set[str]) -> list:
    """Every (setting, point); only the ``fast`` points of the default settings run in the
    quick loop (``-m "not slow"``), the whole matrix in the full suite."""
    return [pytest.param(setting, point, marks=[] if setting == "defaults-skip-bad"
                         and point in fast else [pytest.mark.slow])
            for setting in SETTINGS for point in points]


FIXED_POINTS = {  # kill point -> how to count it
    "train": lambda ref: f"step:{STEPS + 3}",                   # mid training epoch 2
    "prune": lambda ref: "prune:1",                             # inside the pruning
    "finetune": lambda ref: f"step:{EPOCHS * STEPS + STEPS + 3}",  # mid fine-tuning epoch 2
    "checkpoint-write": lambda ref: "write:2",                  # writing epoch 2's checkpoint
}


@pytest.mark.parametrize(("setting", "point"), _cells(FIXED_POINTS, fast={"checkpoint-write"}))
@pytest.mark.slow
def test_fixed_ratio_resumes_bit_identical(tmp_path, folders, reference, setting, point):
    ref = reference(setting, "0.5")
    _kill_and_resume(tmp_path, folders[SETTINGS[setting][1]], setting, "0.5",
                     FIXED_POINTS[point](ref), ref)


AUTO_POINTS = {
    "first-trial": lambda ref: f"step:{ref.steps_at('prune', 1) + 2}",
    "second-trial-pruning": lambda ref: "prune:2",
    "second-trial": lambda ref: f"step:{ref.steps_at('prune', 2) + 2}",
    "finishing": lambda ref: f"step:{ref.steps_at('finish') + 2}",
}


@pytest.mark.parametrize(("setting", "point"), _cells(AUTO_POINTS, fast={"finishing"}))
@pytest.mark.slow
def test_auto_search_resumes_bit_identical(tmp_path, folders, reference, setting, point):
    ref = reference(setting, "auto")
    # Every point named must be a real one: steps are taken after it in the reference run.
    kill = AUTO_POINTS[point](ref)
    if kill.startswith("step:"):
        assert int(kill[5:]) <= ref.events[-1][1], ref.events  # the last event: the last write
    _kill_and_resume(tmp_path, folders[SETTINGS[setting][1]], setting, "auto", kill, ref)
