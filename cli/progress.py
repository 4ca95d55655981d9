"""Progress for a person: rich bars on a terminal, plain lines when piped, nothing with
``--quiet``. With ``--json``, progress goes to stderr (stdout holds only the JSON). Library
messages name library arguments; these name this command line's flags (:func:`.errors.as_flags`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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

from packtool.progress import Progress, Say, silent

from .console import console_for
from .errors import as_flags

LABELS = {"train": "Training", "finetune": "Fine-tuning"}


def _label(phase: str) -> str:
    return LABELS.get(phase, phase.capitalize())


def _stats(loss: float, acc: float) -> str:
    return f"loss {loss:.4f}  acc {acc:.1%}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word == 'batch' else 's'}"


class RichProgress(Progress):
    """Two bars per phase: epochs (with the last epoch's validation accuracy) and batches."""

    def __init__(self, console: Console, words: Callable[[str], str] = as_flags) -> None:
        self.words = words
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
        self.bars.console.print(self.words(text), markup=False, highlight=False)

    def files_checked(self, done: int, total: int) -> None:
        if self.files_bar is None:
            self.files_bar = self.bars.add_task("Checking images", total=total, stats="")
        self.bars.update(self.files_bar, completed=done)
        if done == total:
            self.bars.remove_task(self.files_bar)
            self.files_bar = None


class PlainProgress(Progress):
    """One line per phase and per epoch (for logs and pipes), on stdout or ``err``."""

    def __init__(self, err: bool = False, words: Callable[[str], str] = as_flags) -> None:
        self.epochs = 0
        self.phase = ""
        self.err = err
        self.words = words

    def phase_start(self, phase: str, epochs: int, batches: int) -> None:
        self.phase, self.epochs = _label(phase), epochs
        self._line(f"{self.phase}: {_plural(epochs, 'epoch')} of {_plural(batches, 'batch')}")

    def epoch_end(self, epoch: int, loss: float, accuracy: float, val_accuracy: float) -> None:
        self._line(f"{self.phase} epoch {epoch}/{self.epochs} done: loss {loss:.4f}, "
                   f"train accuracy {accuracy:.2%}, val accuracy {val_accuracy:.2%}")

    def message(self, text: str) -> None:
        self._line(self.words(text))

    def _line(self, text: str) -> None:
        click.echo(text, err=self.err)


@contextlib.contextmanager
def training_progress(as_json: bool, quiet: bool = False, plan_words: bool = False
                      ) -> Iterator[Progress]:
    """The progress reporter for add-task and run.

    On a terminal: rich bars; not a terminal: plain lines. On stdout, or on stderr with
    ``--json`` (stdout holds only the JSON); nothing with ``quiet``. ``plan_words``: messages
    keep the library's names (a plan file's keys) instead of flags.
    """
    if quiet:
        yield Progress()
        return
    words = (lambda text: text) if plan_words else as_flags
    console = console_for(stderr=as_json)
    if not console.is_terminal:
        yield PlainProgress(err=as_json, words=words)
        return
    with RichProgress(console, words) as progress:
        yield progress


def status(quiet: bool) -> Say:
    """A ``say`` for the exporters and the runtime: one line per step on stderr (stdout keeps
    the result, tables or JSON), or nothing with ``quiet``."""
    if quiet:
        return silent
    return lambda text: click.echo(as_flags(text), err=True)
