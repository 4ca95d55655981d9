"""The shared-weight archive, ``pack.safetensors``: every task of a pack in one compact file.

Its spec is ``docs/formats.md`` ("The archive"): one safetensors file, no pickle, each owned
weight once, the owner index entropy-coded (:mod:`.owner_code`), every task's head, private state
and feature statistics, and a checksum of it all (safetensors has none). A pack's ``model.pt``
keeps the whole network for training; the archive keeps only what serving the existing tasks
needs. This module is the format's one writer (:func:`write_archive`) and one validating reader
(:func:`read_archive`); a reader refuses a foreign, damaged, tampered or newer file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .._version import __version__
from ..errors import PackFormatError, PackToolError, TaskError, one_line
from ..fileio import atomic_write_bytes
from ..growth import growable_widths, widen
from ..method import FREE, MAX_TASKS
from ..models import ArchSpec, build_network
from ..pack import Pack
from ..records import TaskRecord, read_stats, stored_stats
from .digest import tensor_bytes
from .model_file import pack_fields, pack_options
from .owner_code import decode_owners, encode_owners, owner_bits, unpack_bits

FORMAT = "packtool.archive"
FORMAT_VERSION = 6  # the newest version this packtool reads and writes

# safetensors' dtype codes: part of the checksum, so the spec does not depend on torch's names.
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on the JSON header


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveInfo:
    """A written archive: its path and size in bytes."""

    path: Path
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The ``archive`` object of ``packtool export --json``."""
        return {"path": str(self.path), "bytes": self.bytes}


def archive_bytes(pack: Pack, *, half: bool = False, source_sha256: str | None = None) -> bytes:
    """The archive of ``pack`` as bytes (see ``docs/formats.md``).

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
        for name, value in stored_stats(record).items():
            # Scales, steps and thresholds stay float32 (they may pass float16's 65504).
            exact = name in ("scale", "reject") or name.endswith("_step")
            tensors[f"features/{record.index}/{name}"] = (
                value.detach().cpu().float().contiguous() if exact
                else store(f"feature statistics of {record.name}", value))
    spec = pack.spec
    shared_fields = {k: v if isinstance(v, str) else _json(v) for k, v in pack_fields(pack).items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(archive_version(pack)),
        "owner_coding": "ans",
        **shared_fields,
        **({"pretrained": "true"} if pack.pretrained else {}),
        "layers": _json(layers),
        "bits": str(bits),
        "float_dtype": "float16" if half else "float32",
        "preprocessing": _json({"input_size": list(spec.input_size), "mean": list(spec.mean),
                                "std": list(spec.std)}),
        "source_sha256": source_sha256 or "",
    }
    metadata["checksum"] = checksum(tensors, metadata)
    return tensors, metadata


def archive_version(pack: Pack) -> int:
    """The oldest archive format that holds ``pack``: 4 (the owner coding), 5 for a grown
    network's widths, 6 for rejection thresholds (and int8 feature statistics)."""
    return 6 if any(r.rejects for r in pack.tasks) else 5 if pack.widths else 4


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


# ------------------------------------------------------------------------------------------------
# Checksum and reading
# ------------------------------------------------------------------------------------------------


def checksum(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 hex of the payload, as ``docs/formats.md`` defines it."""
    h = hashlib.sha256()

    def field(data: bytes | memoryview) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    for name in sorted(tensors):
        t = tensors[name]
        field(name.encode())
        field(DTYPE_CODES[t.dtype].encode())
        field(",".join(str(d) for d in t.shape).encode())
        field(tensor_bytes(t))
    for key in sorted(metadata):
        if key != "checksum":
            field(key.encode())
            field(metadata[key].encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def read_archive(path: str | os.PathLike) -> Pack:
    """Read an archive written by :func:`write_archive` into a :class:`~packtool.pack.Pack`.

    The pack serves every archived task (``model_for`` works without ``model.pt``): shared
    weights hold the owned values and zeros for free weights, as in the original pack after its
    first task. ``initial_private`` and ``pretrained_head`` are empty: they only seed the first
    task, and an archive always has one. Half-precision archives read back as float32.

    Raises:
        PackFormatError: not an archive (foreign safetensors, random bytes), truncated, failing
            its checksum (e.g. a flipped byte), or written in a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise PackToolError(f"archive {path} does not exist")
    return archive_from_bytes(path.read_bytes(), source=str(path))


def archive_from_bytes(data: bytes, source: str = "archive") -> Pack:
    """:func:`read_archive` of the file's bytes; ``source`` names it in error messages."""
    metadata = _read_metadata(data, source)
    if metadata.get("format") != FORMAT:
        raise PackFormatError(f"{source} is a safetensors file but not a packtool archive")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) < 1:
        raise PackFormatError(f"{source} has an invalid archive format version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise PackFormatError(
            f"{source} uses archive format {version}, newer than this packtool ({__version__}, "
            f"format {FORMAT_VERSION}); upgrade packtool to read it"
        )
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise PackFormatError(
            f"{source} is truncated or damaged: {one_line(exc, first=True)}"
        ) from None
    if metadata.get("checksum") != checksum(tensors, metadata):
        raise PackFormatError(
            f"{source} failed its checksum: the archive is corrupted or was modified"
        )
    try:
        return _pack_from_payload(tensors, metadata)
    except (KeyError, TypeError, ValueError, AttributeError, TaskError) as exc:
        raise PackFormatError(f"{source} is damaged: {type(exc).__name__}: {exc}") from None


def _read_metadata(data: bytes, source: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, or PackFormatError if it is not one."""
    not_safetensors = PackFormatError(
        f"{source} is not a packtool archive (not a safetensors file)"
    )
    if len(data) < 8:
        raise not_safetensors
    size = int.from_bytes(data[:8], "little")
    if size > min(_HEADER_LIMIT, len(data) - 8) or data[8:9] != b"{":
        raise not_safetensors
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise not_safetensors from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        metadata = {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise not_safetensors
    return metadata


def _pack_from_payload(tensors: dict[str, Tensor], metadata: dict[str, str]) -> Pack:
    """The pack, from a payload whose checksum matched; the Pack checks its invariants."""
    metas = json.loads(metadata["tasks"])
    if not isinstance(metas, list) or not 1 <= len(metas) <= MAX_TASKS:
        raise ValueError("the task table is empty or too long")
    bits = int(metadata["bits"])
    if bits != owner_bits(len(metas)):
        raise ValueError(f"{bits} owner bits do not fit {len(metas)} tasks")
    half = metadata["float_dtype"] == "float16"
    layers = json.loads(metadata["layers"])
    shared: dict[str, Tensor] = {}
    owners: dict[str, Tensor] = {}
    coding = metadata.get("owner_coding", "bits")
    if coding not in ("bits", "ans"):
        raise ValueError(f"unknown owner coding {coding!r}")
    if coding == "ans":  # decoding allocates what the file says: check it against the network
        _check_layer_shapes(ArchSpec.from_dict(json.loads(metadata["spec"])), layers,
                            metas[-1].get("widths", {}))
    for key, shape in layers:
        numel = math.prod(shape)  # unpack_bits checks it against the stored bytes first
        own = (decode_owners(tensors[f"owners/{key}"], tensors[f"owner_counts/{key}"], numel)
               if coding == "ans" else unpack_bits(tensors[f"owners/{key}"], bits, numel))
        owned = own != FREE
        values = _float32(tensors[f"shared/{key}"], half)
        if values.dim() != 1 or values.numel() != int(owned.sum()):
            raise ValueError(f"{key} stores {values.numel()} weights for {int(owned.sum())} owned")
        weight = torch.zeros(numel, dtype=values.dtype)
        weight[owned] = values
        shared[key], owners[key] = weight.view(shape), own.view(shape)
    kinds = ("shared", "owners", "owner_counts") if coding == "ans" else ("shared", "owners")
    known = {f"{kind}/{key}" for key, _ in layers for kind in kinds}
    unknown = [n for n in tensors
               if n not in known and not n.startswith(("head/", "private/", "features/"))]
    if unknown:
        raise ValueError(f"unexpected tensors {sorted(unknown)[:3]}")
    heads = _group(tensors, "head", len(metas), half)
    private = _group(tensors, "private", len(metas), half)
    stats = {k: read_stats(v) for k, v in _group(tensors, "features", len(metas), half).items()}
    tasks = [TaskRecord(head=heads[i], private=private[i], feature_stats=stats[i], **m)
             for i, m in enumerate(metas, start=1)]
    # initial_private only seeds a pack's first task; an archive always has one, so it is empty.
    return Pack(ArchSpec.from_dict(json.loads(metadata["spec"])), shared, owners, {}, tasks,
                pretrained=metadata.get("pretrained") == "true", **pack_options(
                    {**metadata, **({"planned_tasks": int(metadata["planned_tasks"])}
                                    if "planned_tasks" in metadata else {})}))


def _check_layer_shapes(spec: ArchSpec, layers: list, widths: Mapping[str, int]) -> None:
    """Every recorded layer is a parameter of ``spec``'s network, at the growable ``widths``
    of its last task, with the recorded shape (built on the meta device: shapes only, no
    memory; a grown network is traced first, on the CPU)."""
    found = growable_widths(build_network(spec), spec.input_size) if widths else []
    with torch.device("meta"):
        net = build_network(spec)
        widen(net, found, widths)
        shapes = {k: list(p.shape) for k, p in net.named_parameters()}
    for key, shape in layers:
        if shapes.get(key) != shape:
            raise ValueError(f"layer {key} {shape} is not in the network of {spec.arch}")


def _group(tensors: Mapping[str, Tensor], kind: str, count: int, half: bool
           ) -> dict[int, dict[str, Tensor]]:
    """``kind/k/name`` tensors as ``{k: {name: tensor}}`` for ``k`` in ``1..count``."""
    groups: dict[int, dict[str, Tensor]] = {k: {} for k in range(1, count + 1)}
    for full in sorted(n for n in tensors if n.startswith(kind + "/")):  # stable dict order
        _, index, name = full.split("/", 2)
        k = int(index)
        if k not in groups or not name:
            raise ValueError(f"tensor {full!r} names no task")
        groups[k][name] = _float32(tensors[full], half)
    return groups


def _float32(t: Tensor, half: bool) -> Tensor:
    return t.to(torch.float32) if half and t.dtype == torch.float16 else t
