"""Settings given as text (the command line, plan files): a subset of a dataset's classes and
an input size, parsed with plain Python, so a usage error is told before anything is loaded."""

from __future__ import annotations

import re

from .errors import ArchitectureError, DataError

_MAX_CLASSES = 1_000_000  # bounds the size of a --classes range such as "0-999999999999"


def parse_classes(text: str) -> list[int | str]:
    """Parse ``--classes``: ``"0,1"``, ``"0-4"``, ``"0-2,7"`` -> class indices in the given
    order; an item that is not a number or a range is a class name (``"circle,hexagon"``), as
    the dataset spells it, resolved when the dataset is read.

    Ranges are inclusive and ascending. Duplicates, negative numbers and empty items raise
    DataError.
    """
    result: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part, re.ASCII)
        if match is None:
            if not part or re.fullmatch(r"-\s*\d+.*", part):
                what = "negative class index" if part else "empty class item"
                raise DataError(f"{what} {part!r} in {text!r} (use e.g. 0,1 or 0-4 or 0-2,7, "
                                "or class names)")
            result.append(part)  # a class name
            continue
        low = int(match[1])
        high = low if match[2] is None else int(match[2])
        if high < low:
            raise DataError(f"class range {part!r} in {text!r} runs backwards")
        if len(result) + high - low + 1 > _MAX_CLASSES:
            raise DataError(f"{text!r} selects more than {_MAX_CLASSES} classes")
        result.extend(range(low, high + 1))
    seen: set[int | str] = set()
    for k in result:
        if k in seen:
            raise DataError(f"class {k} is listed twice in {text!r}")
        seen.add(k)
    return result


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Parse ``"3x224x224"`` into ``(3, 224, 224)``; ArchitectureError otherwise."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ArchitectureError(f"input size must look like 3x224x224, got {text!r}")
    return size  # type: ignore[return-value]
