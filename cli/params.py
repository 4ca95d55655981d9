"""Option parsing helpers shared by the commands: converters, defaults, small file helpers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from packtool.choices import AUTO
from packtool.errors import PackToolError
from packtool.parse import parse_classes, parse_input_size

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

DEFAULT_MODEL = "model.pt"


def model_argument(func: F) -> F:
    """The optional MODEL argument (default ``model.pt`` in the current directory)."""
    return click.argument("model", required=False, default=DEFAULT_MODEL, metavar="[MODEL]",
                          type=click.Path(path_type=Path))(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout instead of tables.")(func)


def quiet_option(func: F) -> F:
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress lines (on stderr, or stdout without --json); only "
                             "the result and errors.")(func)


def _optional(parse: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, str | None],
                                                     T | None]:
    """A click callback: ``parse`` the value if given; its PackToolError is a usage error."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except PackToolError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


input_size = _optional(parse_input_size)
classes = _optional(parse_classes)


class FiniteRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and infinities (which the range check
    lets through: every comparison with ``nan`` is false)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class NumberOrWord(click.ParamType):
    """A number that :meth:`accepts` allows, or one of ``words``; the error says both
    (``expected``). ``nan`` fails every range, so an unreadable value is refused alike."""

    words: tuple[str, ...] = (AUTO,)
    expected = ""

    def accepts(self, number: float) -> bool:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or value in self.words:
            return value
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not self.accepts(number):
            self.fail(f"{value!r} is neither {self.expected}", param, ctx)
        return number


class PruneRatio(NumberOrWord):
    """``--prune``: a ratio in [0, 1), or ``auto``."""

    name = "ratio"
    expected = "a number in [0, 1) nor 'auto'"

    def accepts(self, number: float) -> bool:
        return 0.0 <= number < 1.0


class GrowFraction(NumberOrWord):
    """``--grow``: a positive fraction (of the original widths), or ``auto``."""

    name = "fraction"
    expected = "a positive number nor 'auto'"

    def accepts(self, number: float) -> bool:
        return 0.0 < number < math.inf


class Workers(click.ParamType):
    """``--workers``: a number of loader processes, or ``auto``."""

    name = "workers"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        if not str(value).isdigit():
            self.fail(f"{value!r} is neither a whole number >= 0 nor 'auto'", param, ctx)
        return int(value)


class Cache(NumberOrWord):
    """``--cache``: ``auto``, ``none`` or a budget in GB."""

    name = "cache"
    words = ("auto", "none")
    expected = "auto, none nor a number of GB >= 0"

    def accepts(self, number: float) -> bool:
        return number >= 0


def kwargs(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON (``64``, ``true``, ``[1,2]``), else a string."""
    result: dict[str, Any] = {}
    for item in value:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            result[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            result[key.strip()] = text
    return result


def check_export_mode(name: str | None, all_tasks: bool, multi_task: bool,
                       archive: str | None, out: str | None) -> None:
    """``export``: exactly one of its four modes, with the paths that mode needs."""
    if sum((name is not None, all_tasks, multi_task, archive is not None)) != 1:
        raise click.UsageError("choose one of --task NAME, --all --out DIR, --multi-task --out "
                               "FILE.onnx or --archive FILE")
    if all_tasks and out is None:
        raise click.UsageError("--all needs --out DIR")
    if multi_task and out is None:
        raise click.UsageError("--multi-task needs --out FILE.onnx")
    if archive is not None and out is not None:
        raise click.UsageError("--archive FILE takes no --out")


def check_export_options(name: str | None, multi_task: bool, archive: str | None,
                          dense: bool, half: bool, int8: bool, max_drop: float | None,
                          force: bool, data_root: str | None) -> None:
    """``export``: the options that apply to the chosen mode, and no others."""
    if half and int8:
        raise click.UsageError("choose one of --half and --int8")
    if half and name is None and archive is None:
        raise click.UsageError("--half applies to --task NAME or --archive FILE")
    if int8 and name is None:
        raise click.UsageError("--int8 applies to --task NAME only")
    reduced_task = name is not None and (half or int8)
    if (max_drop is not None or force) and not reduced_task:
        raise click.UsageError("--max-drop and --force apply to --task NAME with --int8 or "
                               "--half")
    if dense and (reduced_task or multi_task):
        raise click.UsageError("--dense applies to float32 per-task ONNX files only")
    if data_root is not None and not (half or int8):
        raise click.UsageError("--data-root applies to --half and --int8 only")
