"""Logs of a run (``packtool run --log-dir DIR``): per task and phase, the training loss and the
validation accuracy of every epoch, then each task's chosen prune ratio and the capacity it left.

Always ``DIR/scalars.csv`` (``tag,step,value``), and TensorBoard event files beside it when the
``tensorboard`` package is installed (``pip install "packtool[tensorboard]"``; written through
``torch.utils.tensorboard``). Tags: ``<task>/<phase>/loss`` and ``<task>/<phase>/val_accuracy``
(step: the epoch), ``sequence/prune`` and ``sequence/free_fraction`` (step: the task's index).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any

from .progress import Progress

#: Whether TensorBoard event files can be written here.
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


class RunLog(Progress):
    """A :class:`Progress` that records the scalars; ``forward`` also receives every call (the
    command line's bars). Name the task being added with :meth:`task_start`."""

    def __init__(self, directory: str | os.PathLike, forward: Progress | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.forward = forward or Progress()
        self.task, self.phase = "task", "train"
        self._csv = open(self.directory / "scalars.csv", "a", newline="")  # noqa: SIM115 - closed by close()
        self._rows = csv.writer(self._csv)
        if self._csv.tell() == 0:
            self._rows.writerow(["tag", "step", "value"])
        self._events = None
        if TENSORBOARD:
            # An optional extra: imported when a log is written (docs/architecture.md).
            from torch.utils.tensorboard import SummaryWriter

            self._events = SummaryWriter(str(self.directory))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._rows.writerow([tag, step, value])
        self._csv.flush()
        if self._events is not None:
            self._events.add_scalar(tag, value, step)

    def task_start(self, name: str) -> None:
        self.task = name

    def task_done(self, pack: Any, result: Any, step: int) -> None:
        self.scalar("sequence/prune", float(result.prune), step)
        self.scalar("sequence/free_fraction", float(pack.free_fraction), step)
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        self._csv.close()
        if self._events is not None:
            self._events.close()

    # Progress, recorded and forwarded.

    def phase_start(self, phase: str, epochs: int, batches: int) -> None:
        self.phase = phase
        self.forward.phase_start(phase, epochs, batches)

    def epoch_end(self, epoch: int, loss: float, accuracy: float, val_accuracy: float) -> None:
        self.scalar(f"{self.task}/{self.phase}/loss", loss, epoch)
        self.scalar(f"{self.task}/{self.phase}/val_accuracy", val_accuracy, epoch)
        self.forward.epoch_end(epoch, loss, accuracy, val_accuracy)

    def batch_end(self, batch: int, loss: float, accuracy: float) -> None:
        self.forward.batch_end(batch, loss, accuracy)

    def phase_end(self, phase: str) -> None:
        self.forward.phase_end(phase)

    def message(self, text: str) -> None:
        self.forward.message(text)

    def files_checked(self, done: int, total: int) -> None:
        self.forward.files_checked(done, total)
