"""Option parsing helpers shared by the commands: converters, defaults, small file helpers."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from packtool.errors import PackToolError

if TYPE_CHECKING:
    pass

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODEL = "model.pt"
PRETRAINED = "DEFAULT"


def model_argument(func: F) -> F:
    """The optional MODEL argument (default ``model.pt`` in the current directory)."""
    return click.argument("model", required=False, default=DEFAULT_MODEL, metavar="[MODEL]",
                          type=click.Path(path_type=Path))(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout instead of tables.")(func)


def input_size(ctx: click.Context, param: click.Parameter, value: str | None
               ) -> tuple[int, int, int] | None:
    if value is None:
        return None
    from packtool.models import parse_input_size

    try:
        return parse_input_size(value)
    except PackToolError as exc:
        raise click.BadParameter(str(exc)) from None


def classes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    from packtool.data import parse_classes

    try:
        return parse_classes(value)
    except PackToolError as exc:
        raise click.BadParameter(str(exc)) from None


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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_weights_file(arch: str) -> Path:
    """torchvision's DEFAULT weights for ``arch`` if they are already in the local torch hub cache.

    Nothing is downloaded: without a cached copy this raises a PackToolError that says where to
    put the file (or to pass it with ``--weights FILE``).
    """
    import torch
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise PackToolError(
            f"--weights DEFAULT: {arch!r} has no pretrained torchvision weights; "
            "pass --weights FILE (a local state_dict) or leave --weights out"
        ) from None
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise PackToolError(
            f"--weights DEFAULT: torchvision's {arch} weights are not cached at {cached} and "
            f"packtool downloads nothing; fetch {url} on a machine with network access and pass "
            "--weights FILE (or copy it to that path)"
        )
    return cached
