"""Writing the shared-weight archive: every task of a pack in one compact safetensors file.

The format (metadata, tensors, owner bit-packing, checksum) is specified, and read back, in
:mod:`packtool.formats.archive`. A pack's ``model.pt`` keeps the whole network, free weights
and initial state included, for training; the archive keeps only what serving the existing tasks
needs: each owned weight once, the owner index bit-packed, every task's head and private state.
For ``T`` tasks its size is close to the information floor ``owned weights x 4 bytes + all
prunable weights x b bits + heads + private state`` with ``b = ceil(log2(T + 1))``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import Tensor

from packtool._version import __version__
from packtool.errors import PackToolError
from packtool.fileio import atomic_write_bytes
from packtool.formats.archive import (
    DTYPE_CODES,
    FORMAT,
    FORMAT_VERSION,
    checksum,
    owner_bits,
)
from packtool.formats.owner_code import encode_owners
from packtool.method import FREE
from packtool.pack import Pack


@dataclass(frozen=True)
class ArchiveInfo:
    """A written archive: its path and size in bytes."""

    path: Path
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The ``archive`` object of ``packtool export --json``."""
        return {"path": str(self.path), "bytes": self.bytes}


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def archive_bytes(pack: Pack, *, half: bool = False, source_sha256: str | None = None) -> bytes:
    """The archive of ``pack`` as bytes (see the module docstring).

    Args:
        half: store floating tensors as float16 (about half the size; not bit-exact).
        source_sha256: SHA-256 of the model file ``pack`` was read from, recorded as is.

    Raises:
        PackToolError: the pack has no task, or ``half`` and a value overflows float16.
    """
    tensors, metadata = archive_payload(pack, half=half, source_sha256=source_sha256)
    return st_save(tensors, metadata=metadata)


def write_archive(pack: Pack, path: str | os.PathLike, *, half: bool = False,
                  source_sha256: str | None = None) -> ArchiveInfo:
    """Write the archive of ``pack`` to ``path`` atomically; see :func:`archive_bytes`."""
    data = archive_bytes(pack, half=half, source_sha256=source_sha256)
    atomic_write_bytes(path, data)
    return ArchiveInfo(Path(path), len(data))


def archive_payload(pack: Pack, *, half: bool = False, source_sha256: str | None = None
                    ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The archive's tensors (CPU, contiguous) and metadata, checksum included."""
    if not pack.tasks:
        raise PackToolError("the pack has no tasks yet: there is nothing to archive")
    bits = owner_bits(len(pack.tasks))
    store = _Storage(half)
    tensors: dict[str, Tensor] = {}
    layers = []
    for key, weight in pack.shared.items():
        owners = pack.owners[key].detach().to("cpu")
        owned = owners.reshape(-1) != FREE
        tensors[f"shared/{key}"] = store(key, weight.detach().to("cpu").reshape(-1)[owned])
        tensors[f"owners/{key}"], tensors[f"owner_counts/{key}"] = encode_owners(
            owners, len(pack.tasks) + 1)
        layers.append([key, list(weight.shape)])
    for record in pack.tasks:
        for name, value in record.head.items():
            tensors[f"head/{record.index}/{name}"] = store(f"head of {record.name}", value)
        for name, value in record.private.items():
            tensors[f"private/{record.index}/{name}"] = store(f"private {name}", value)
        for name, value in record.feature_stats.items():
            tensors[f"features/{record.index}/{name}"] = (
                value.detach().cpu().float().contiguous() if name == "scale"  # may pass 65504
                else store(f"feature statistics of {record.name}", value))
    spec = pack.spec
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),  # the owner coding needs format 4
        "owner_coding": "ans",
        "packtool_version": __version__,
        "spec": _json(spec.to_dict()),
        "policy": pack.policy,
        **({"free_init": pack.free_init} if pack.free_init != "zero" else {}),
        **({"pretrained": "true"} if pack.pretrained else {}),
        **({"planned_tasks": str(pack.planned_tasks)} if pack.planned_tasks else {}),
        "tasks": _json([t.meta() for t in pack.tasks]),
        "layers": _json(layers),
        "bits": str(bits),
        "float_dtype": "float16" if half else "float32",
        "preprocessing": _json({"input_size": list(spec.input_size), "mean": list(spec.mean),
                                "std": list(spec.std)}),
        "source_sha256": source_sha256 or "",
    }
    metadata["checksum"] = checksum(tensors, metadata)
    return tensors, metadata


class _Storage:
    """Converts tensors to their stored form: CPU, contiguous, floats as float16 if ``half``."""

    def __init__(self, half: bool) -> None:
        self.half = half

    def __call__(self, what: str, value: Tensor) -> Tensor:
        t = value.detach().to("cpu")
        if t.dtype not in DTYPE_CODES:
            raise PackToolError(f"cannot archive {what}: unsupported dtype {t.dtype}")
        if self.half and t.is_floating_point():
            converted = t.to(torch.float16)
            # float16 tops out at 65504; refuse to turn a finite value into inf.
            if bool((torch.isinf(converted) & torch.isfinite(t)).any()):
                raise PackToolError(f"cannot archive {what} in half precision: values exceed "
                                    "the float16 range; write the archive without `half=True`")
            t = converted
        return t.contiguous().clone()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
