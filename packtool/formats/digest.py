"""The digest of nested tensors and plain values: SHA-256 over names, dtypes, shapes and bytes.

Used by the model file and the checkpoint (stored in the file and checked on load) and by
distributed training (every rank's weights compared before a task is committed). The archive
has its own, language-neutral checksum (see :mod:`.archive`); both feed a tensor's bytes through
:func:`tensor_bytes`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def tensor_bytes(t: Tensor) -> memoryview:
    """The raw bytes of ``t`` (on the CPU, contiguous, native byte order), without a copy when
    it already is."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def digest(values: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``values``: for every key in sorted order, its value hashed under its name.

    A tensor feeds ``"<name>|<dtype>|<shape>|"`` and its bytes; a dict its items under
    ``<name>/<key>`` in sorted key order; a list its items under ``<name>[<i>]``; any other value
    ``"<name>=<repr>|"``.
    """
    h = hashlib.sha256()
    for key in sorted(values):
        _update(h, key, values[key])
    return h.hexdigest()


def _update(h: Any, name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        h.update(f"{name}|{value.dtype}|{list(value.shape)}|".encode())
        h.update(tensor_bytes(value))
    elif isinstance(value, dict):
        for key in sorted(value):
            _update(h, f"{name}/{key}", value[key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _update(h, f"{name}[{i}]", item)
    else:
        h.update(f"{name}={value!r}|".encode())
