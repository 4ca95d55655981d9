"""Build torch.onnx's table of ATen -> ONNX functions once per process, not once per export.

``torch.onnx.export(..., dynamo=True)`` starts every export by building that table
(``ONNXRegistry.from_torchlib``: the source of about 500 onnxscript functions read and
parsed), which is about half of exporting a small network: 1-2.5 s on a 2-core machine, paid
again for each task, form and verification packtool exports. The table depends only on the
opset, so within :func:`one_torchlib_table` the first export of an opset builds it and every
export gets a copy (its own lists: ``custom_translation_table`` entries are added to them).
The graphs written are the same bytes (``tests/test_exporters.py`` checks it).

It reaches into a private module of torch: where that is not shaped as expected (another torch
version), :func:`one_torchlib_table` does nothing and exports are as slow as torch makes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from torch.onnx._internal.exporter import _registration
except ImportError:  # a torch without the dynamo exporter's registry module
    _registration = None

#: torch's arguments (the opset, or none: its default) -> the table built first; never handed
#: out itself.
_TABLES: dict[Any, Any] = {}


def _registry_class() -> Any:
    """torch's ``ONNXRegistry``, if it has what :func:`one_torchlib_table` relies on."""
    registry = getattr(_registration, "ONNXRegistry", None)
    found = getattr(registry, "__dict__", {}).get("from_torchlib")
    return registry if isinstance(found, classmethod) else None


@contextmanager
def one_torchlib_table() -> Iterator[None]:
    """Within: every ``torch.onnx.export`` of an opset after the first reuses its table."""
    registry = _registry_class()
    if registry is None:
        yield
        return
    build = registry.__dict__["from_torchlib"]

    def from_table(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        table = _TABLES.get(key)
        if table is None:
            table = build.__func__(cls, *args, **kwargs)
            if not isinstance(getattr(table, "functions", None), dict):
                return table  # not the registry this module knows: no reuse
            _TABLES[key] = table
        copy = cls()
        copy.__dict__.update(table.__dict__)
        copy.functions = {target: list(funcs) for target, funcs in table.functions.items()}
        return copy

    registry.from_torchlib = classmethod(from_table)
    try:
        yield
    finally:
        registry.from_torchlib = build
