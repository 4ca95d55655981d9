"""One-line errors: how every failure of a command reaches the user.

- :class:`~packtool.errors.PackToolError` (anything the user can cause): ``Error: <message>``,
  with the library's arguments named as this command line's flags (:func:`as_flags`).
- ``OSError`` (permissions, a full disk, ...): ``Error: <reason>: <file>``.
- :class:`~packtool.errors.UsageError` (a bad plan file, a choice missing): ``Error: <message>``,
  exit status 2, as click's own usage errors.
- Ctrl-C: ``Error: interrupted`` plus what was (not) changed, exit status 130.
- Anything else is a bug: ``Error: internal error: <type>: <message> (run with --debug ...)``.

All go to stderr with exit status 1 (usage errors 2) and no traceback; ``--debug`` re-raises
instead. Click's own usage errors keep click's handling (exit status 2).
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import click

from packtool.errors import PackToolError, PlanError, UsageError, one_line

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The library's arguments that its messages name (as `name` or `name=value`), by their flags.
FLAGS = {
    "resume": "--resume", "restart": "--restart", "name": "--task", "task": "--task",
    "root": "--data-root", "lr": "--lr", "finetune_lr": "--finetune-lr", "device": "--device",
    "half": "--half", "force": "--force", "weights": "--weights", "classes": "--classes",
    "skip_bad_images": "--skip-bad-images", "cache": "--cache", "epochs": "--epochs",
    "finetune_epochs": "--finetune-epochs", "grow": "--grow", "max_size": "--max-size",
    "reserve": "--reserve", "tolerance": "--tolerance", "auto_trials": "--auto-trials",
    "val_fraction": "--val-fraction", "data": "--data",
}
_MENTION = re.compile(r"`(\w+)(?:=([^`]*))?`")


def as_flags(message: str) -> str:
    """A library message in this command line's terms: `resume=True` -> --resume,
    `root=DIR` -> --data-root DIR; other quoted names keep their quotes."""
    def flag(match: re.Match[str]) -> str:
        name, value = match[1], match[2]
        if name not in FLAGS:
            return match[0]
        return FLAGS[name] if value in (None, "True") else f"{FLAGS[name]} {value}"

    return _MENTION.sub(flag, message)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


class ErrorHandlingGroup(click.Group):
    """A click group that turns exceptions of its commands into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if ctx.params.get("debug"):
                raise
            _report(ctx, exc)


def _report(ctx: click.Context, exc: BaseException) -> NoReturn:
    if isinstance(exc, KeyboardInterrupt):
        note = ctx.meta.get("interrupted")
        fail("interrupted" + (f"; {note}" if note else ""), EXIT_INTERRUPTED)
    if isinstance(exc, PlanError):  # a bad plan is a bad argument (it names plan keys)
        fail(one_line(exc), EXIT_USAGE)
    # A plan's user sets the library's arguments as plan keys, not flags (as run's progress).
    words = (lambda text: text) if ctx.meta.get("plan_words") else as_flags
    if isinstance(exc, UsageError):
        fail(words(one_line(exc)), EXIT_USAGE)
    if isinstance(exc, PackToolError):
        fail(words(one_line(exc)))
    if isinstance(exc, BrokenPipeError):  # e.g. `packtool info | head -1`
        raise click.exceptions.Exit(EXIT_FAILURE)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        fail(one_line(f"{exc.strerror}{where}"))
    fail(f"internal error: {type(exc).__name__}: {one_line(exc)} "
         "(run with --debug for the traceback)")
