"""Packages that load their modules on first use (PEP 562).

``packtool``, ``packtool.data`` and ``packtool.exporters`` name their public objects and the
module defining each; a module is imported when one of its names is first used. So
``from packtool.exporters.runtime import predict`` costs numpy, Pillow and onnxruntime, not
torch, and ``import packtool`` costs nothing until a name is used. Modules themselves import
what they use at the top.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

Names = dict[str, tuple[str, ...]]


def exports(package: str, public: Names, kept: Names | None = None
            ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``.

    ``public`` maps a module (relative, ``".pack"``, or absolute) to the names it defines that
    make the package's API (``__all__``); a name listed under the module ``""`` is a submodule.
    ``kept`` are names that still resolve, for code written against earlier versions, but are
    not part of ``__all__`` (import them from their modules).
    """
    where = {name: module for listed in (public, kept or {})
             for module, names in listed.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = (importlib.import_module(f".{name}", package) if module == "" else
                 getattr(importlib.import_module(module, package), name))
        setattr(sys.modules[package], name, value)  # later uses skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(n for m, names in public.items() if m != ""
                                        for n in names)
