"""Training progress for add-task: rich bars on a terminal, plain lines when piped."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars

from packtool.progress import Progress

from .console import console_for

LABELS = {"train": "Training", "finetune": "Fine-tuning"}


def _label(phase: str) -> str:
    return LABELS.get(phase, phase.capitalize())


def _stats(loss: float, acc: float) -> str:
    return f"loss {loss:.4f}  acc {acc:.1%}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word == 'batch' else 's'}"


class RichProgress(Progress):
    """Two bars per phase: epochs (with the last epoch's validation accuracy) and batches."""

    def __init__(self, console: Console) -> None:
        self.bars = Bars(
            TextColumn("{task.description:<20}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console,
        )
        self.epoch_bar: TaskID | None = None
        self.batch_bar: TaskID | None = None
        self.files_bar: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def phase_start(self, phase: str, epochs: int, batches: int) -> None:
        self.epoch_bar = self.bars.add_task(f"{_label(phase)} epochs", total=epochs, stats="")
        self.batch_bar = self.bars.add_task("  batches", total=batches, stats="")

    def batch_end(self, batch: int, loss: float, accuracy: float) -> None:
        assert self.batch_bar is not None
        self.bars.update(self.batch_bar, completed=batch, stats=_stats(loss, accuracy))

    def epoch_end(self, epoch: int, loss: float, accuracy: float, val_accuracy: float) -> None:
        assert self.epoch_bar is not None and self.batch_bar is not None
        stats = f"{_stats(loss, accuracy)}  val {val_accuracy:.1%}"
        self.bars.update(self.epoch_bar, completed=epoch, stats=stats)
        self.bars.reset(self.batch_bar, stats="")

    def phase_end(self, phase: str) -> None:
        if self.batch_bar is not None:
            self.bars.remove_task(self.batch_bar)
            self.batch_bar = None

    def message(self, text: str) -> None:
        self.bars.console.print(text, markup=False, highlight=False)

    def files_checked(self, done: int, total: int) -> None:
        if self.files_bar is None:
            self.files_bar = self.bars.add_task("Checking images", total=total, stats="")
        self.bars.update(self.files_bar, completed=done)
        if done == total:
            self.bars.remove_task(self.files_bar)
            self.files_bar = None


class PlainProgress(Progress):
    """One line per phase and per epoch on stdout (for logs and pipes)."""

    def __init__(self) -> None:
        self.epochs = 0
        self.phase = ""

    def phase_start(self, phase: str, epochs: int, batches: int) -> None:
        self.phase, self.epochs = _label(phase), epochs
        click.echo(f"{self.phase}: {_plural(epochs, 'epoch')} of {_plural(batches, 'batch')}")

    def epoch_end(self, epoch: int, loss: float, accuracy: float, val_accuracy: float) -> None:
        click.echo(f"{self.phase} epoch {epoch}/{self.epochs}: loss {loss:.4f}, "
                   f"train accuracy {accuracy:.2%}, val accuracy {val_accuracy:.2%}")

    def message(self, text: str) -> None:
        click.echo(text)


@contextlib.contextmanager
def training_progress(as_json: bool) -> Iterator[Progress]:
    """The progress reporter for add-task.

    On a terminal: rich bars (on stderr with ``--json``, so stdout holds only the JSON).
    Not a terminal: plain lines on stdout, or nothing at all with ``--json``.
    """
    console = console_for(stderr=as_json)
    if not console.is_terminal:
        yield Progress() if as_json else PlainProgress()
        return
    with RichProgress(console) as progress:
        yield progress
