"""Exceptions raised by packtool.

Every error a user can cause derives from :class:`PackToolError`; its message is one line that
says what is wrong and, where it helps, what to do. The CLI prints it as ``Error: <message>``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class PackToolError(Exception):
    """Base class of every packtool error meant for the user."""


class PackFormatError(PackToolError):
    """A file is not a valid pack or archive (foreign, truncated, tampered or too new)."""


class ArchitectureError(PackToolError):
    """An architecture cannot be built or does not fit PackNet (e.g. no Linear classifier)."""


class DataError(PackToolError):
    """A dataset is missing, empty, unreadable or does not match the request."""


class TaskError(PackToolError):
    """A task name is unknown or duplicated, or a task's settings are invalid."""


class CapacityError(PackToolError):
    """The network has no free weights left for another task."""


class LockError(PackToolError):
    """Another process holds the lock on a model file."""


class UsageError(PackToolError):
    """Arguments that cannot work as given: a choice missing, or settings that contradict each
    other. The command line treats it as a usage error (exit status 2)."""


class TaskChoiceError(TaskError, UsageError):
    """A file holds several tasks and the call chose none."""


class PlanError(UsageError):
    """A plan file that cannot run: unreadable, malformed, or contradicting the pack it
    continues. The command line treats it as a usage error (exit status 2)."""


def one_line(error: BaseException | str, *, first: bool = False) -> str:
    """An error's message on one line: the one routine behind every ``Error: ...`` line and
    every error that wraps another.

    Lines are joined with runs of whitespace collapsed (``first``: only the first non-empty
    line, for wrapping a foreign library's message, whose later lines are dumps); the type name
    if there is no message. A message that carries a traceback (``DataLoader`` re-raising a
    worker's exception: "Caught X in DataLoader worker ... Traceback ... X: message") gives its
    last line, the original error's, without the ``X:`` prefix.
    """
    text = str(error)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    if "Traceback (most recent call last)" in text:
        head, sep, rest = lines[-1].partition(": ")
        return rest if sep and head.replace(".", "").replace("_", "").isalnum() else lines[-1]
    return lines[0] if first else " ".join(lines)


def did_you_mean(word: str, known: Sequence[str], quote: str = "'") -> str:
    """``"did you mean 'x'? "`` for the one of ``known`` closest to a mistyped ``word``, or
    ``""``: the one routine behind every such hint (``quote``: how the message quotes names)."""
    close = difflib.get_close_matches(word, known, n=1)
    return f"did you mean {quote}{close[0]}{quote}? " if close else ""
