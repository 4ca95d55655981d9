"""Progress of an add-task: what a training loop reports, for a command line or a notebook."""

from __future__ import annotations

from collections.abc import Callable

#: Receives a line of progress for a person (the ``say`` argument of long-running functions).
Say = Callable[[str], None]


def silent(text: str) -> None:
    """Says nothing: the default of every ``say`` argument (a line of progress for a person)."""


class Progress:
    """Receives training progress; subclass and override what you want to show. No-op here."""

    def phase_start(self, phase: str, epochs: int, batches: int) -> None: ...

    def batch_end(self, batch: int, loss: float, accuracy: float) -> None: ...

    def epoch_end(self, epoch: int, loss: float, accuracy: float, val_accuracy: float) -> None: ...

    def phase_end(self, phase: str) -> None: ...

    def message(self, text: str) -> None: ...

    def files_checked(self, done: int, total: int) -> None:
        """``done`` of ``total`` image files checked before training (their headers)."""
