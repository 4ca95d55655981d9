"""The model file, ``model.pt``: a pack's full training state (spec: ``docs/formats.md``, "Model
file").

A ``torch.save`` file of tensors and plain values only, read back with
``torch.load(weights_only=True)`` (no code can run on load), written atomically, with a marker,
a format version (1-4: written in the oldest that holds the tasks' records, so older packtools
read it; a newer one is refused as too new) and a digest of its content. This module is its one
writer (:func:`save`, :func:`content`) and its one validating reader (:func:`load`,
:func:`from_state`); what the content must satisfy beyond the file layer (owners, task order,
names) is checked where every reader's pack is made, :class:`packtool.pack.Pack`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._version import __version__
from ..errors import PackFormatError, PackToolError
from ..fileio import atomic_write, load_weights_only
from ..models import ArchSpec
from ..pack import Pack
from ..records import TaskRecord, format_version, read_stats, stored_stats
from .digest import digest
from .sniff import other_kind

FORMAT = "packtool.pack"
FORMAT_VERSION = 5  # the newest version this packtool reads and writes


# ------------------------------------------------------------------------------------------------
# A pack <-> the file's content
# ------------------------------------------------------------------------------------------------


def pack_fields(pack: Pack) -> dict[str, Any]:
    """What every file holding ``pack`` says of it besides tensors, as plain values: the model
    file stores them as JSON (:func:`meta`), the archive as metadata strings. Optional fields
    are absent at their default, so files that never had them keep their digests."""
    return {
        "packtool_version": __version__,
        "spec": pack.spec.to_dict(),
        "policy": pack.policy,
        **({"free_init": pack.free_init} if pack.free_init != "zero" else {}),  # 0.1.0: zero
        **({"planned_tasks": pack.planned_tasks} if pack.planned_tasks else {}),
        "tasks": [t.meta() for t in pack.tasks],
    }


def pack_options(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`Pack` keyword arguments :func:`pack_fields` stored (defaults for absent
    ones)."""
    return {"policy": fields["policy"], "free_init": fields.get("free_init", "zero"),
            "planned_tasks": fields.get("planned_tasks")}


def meta(pack: Pack) -> dict[str, Any]:
    """The model file's ``meta``: :func:`pack_fields`, and ``pretrained`` where the pretrained
    classifier, kept in the file, does not say it."""
    fields = pack_fields(pack)
    if pack.pretrained and not pack.pretrained_head:
        fields["pretrained"] = True
    return fields


def content(pack: Pack) -> dict[str, Any]:
    """The file's content for ``pack``: plain values and CPU tensors, digest included, in the
    oldest format version that holds the tasks' records (:func:`format_version`)."""
    return encode({
        "meta": json.dumps(meta(pack), sort_keys=True),
        "shared": _to_cpu(pack.shared),
        "owners": _to_cpu(pack.owners),
        "initial_private": _to_cpu(pack.initial_private),
        "pretrained_head": _to_cpu(pack.pretrained_head),
        "heads": [_to_cpu(t.head) for t in pack.tasks],
        "private": [_to_cpu(t.private) for t in pack.tasks],
        **({"released": _to_cpu(pack.released)} if pack.released else {}),
        **({"feature_stats": [_to_cpu(stored_stats(t)) for t in pack.tasks]}
           if any(t.feature_stats for t in pack.tasks) else {}),
    }, format_version(pack.tasks))


def pack_digest(pack: Pack) -> str:
    """SHA-256 (hex) of ``pack``'s file content: identifies this exact pack."""
    return content(pack)["digest"]


def save(pack: Pack, path: str | os.PathLike) -> None:
    """Write ``pack`` to ``path`` atomically (temp file, fsync, rename)."""
    write(path, content(pack))


def to_bytes(pack: Pack) -> bytes:
    """The bytes :func:`save` writes."""
    buffer = io.BytesIO()
    torch.save(content(pack), buffer)
    return buffer.getvalue()


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Pack:
    """Read and validate a pack written by :func:`save`.

    Raises:
        PackFormatError: the file is foreign, truncated, tampered with, holds anything but
            tensors and plain values, or comes from a newer packtool.
    """
    return from_state(read(path), source=str(path)).to(device)


def from_state(loaded: Any, source: str = "pack") -> Pack:
    """Validate a loaded file's content and build the pack (whose constructor checks what the
    content must satisfy)."""
    loaded = check(loaded, source)
    try:
        info = json.loads(loaded["meta"])
        metas, heads, private = info["tasks"], loaded["heads"], loaded["private"]
        if not len(metas) == len(heads) == len(private):
            raise ValueError("task tables have different lengths")
        stats = loaded.get("feature_stats", [{}] * len(metas))
        if len(stats) != len(metas):
            raise ValueError("task tables have different lengths")
        tasks = [TaskRecord(head=_tensor_dict(h), private=_tensor_dict(p),
                            feature_stats=read_stats(_tensor_dict(f)), **m)
                 for m, h, p, f in zip(metas, heads, private, stats)]
        return Pack(ArchSpec.from_dict(info["spec"]), _tensor_dict(loaded["shared"]),
                    _tensor_dict(loaded["owners"]), _tensor_dict(loaded["initial_private"]),
                    tasks, pretrained_head=_tensor_dict(loaded["pretrained_head"]),
                    released=_tensor_dict(loaded.get("released", {})),
                    pretrained=info.get("pretrained"), **pack_options(info))
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise PackFormatError(f"{source} is damaged: {type(exc).__name__}: {exc}") from exc


def is_tensor_dict(obj: Any) -> bool:
    """Whether ``obj`` is a dict of ``str`` names to tensors."""
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor)
                                         for k, v in obj.items())


def _tensor_dict(obj: Any) -> dict[str, Tensor]:
    if is_tensor_dict(obj):
        return obj
    raise TypeError("expected a mapping of names to tensors")


def _to_cpu(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}


# ------------------------------------------------------------------------------------------------
# The file layer: marker, version, digest
# ------------------------------------------------------------------------------------------------


def encode(content: Mapping[str, Any], version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The file's dictionary: ``content`` (CPU tensors, plain values) with marker, ``version``
    and digest."""
    state: dict[str, Any] = {"format": FORMAT, "version": version, **content}
    state["digest"] = digest(state)
    return state


def write(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write :func:`encode`'s dictionary to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


def read(path: str | os.PathLike) -> Any:
    """The loaded (not yet checked) content of the model file at ``path``."""
    path = Path(path)
    if not path.exists():
        raise PackToolError(f"{path} does not exist (create it with `packtool init`)")
    if path.is_dir():
        raise PackToolError(f"{path} is a directory, not a model file")
    kind = other_kind(path)
    if kind is not None:
        raise PackFormatError(f"{path} is not a packtool model file but {kind}")
    return load_torch(path)


def check(state: Any, source: str) -> dict[str, Any]:
    """``state`` if it is a model file's dictionary of a supported version with a matching
    digest; PackFormatError (naming ``source``) otherwise."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        hint = ""
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor)
                                                     for v in state.values()):
            hint = " (it looks like a plain state_dict: give it as initial `weights`)"
        raise PackFormatError(f"{source} is not a packtool model file{hint}")
    version = state.get("version")
    if not isinstance(version, int) or version < 1:
        raise PackFormatError(f"{source} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise PackFormatError(
            f"{source} uses pack format {version}, newer than this packtool "
            f"({__version__}, format {FORMAT_VERSION}); upgrade packtool to read it"
        )
    try:
        matches = state.get("digest") == digest({k: v for k, v in state.items() if k != "digest"})
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a tensor that cannot be hashed
        raise PackFormatError(f"{source} is damaged: {type(exc).__name__}: {exc}") from exc
    if not matches:
        raise PackFormatError(
            f"{source} failed its checksum: the file is corrupted or was modified"
        )
    return state


def load_torch(path: Path, expected: str = "a packtool model file") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear line.

    ``expected`` names what the file should have been, for the message.
    """
    try:
        return load_weights_only(path)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # a class or function reference, i.e. code
            raise PackFormatError(
                f"{path} was refused: it holds Python objects other than tensors and plain "
                "values (possibly code), so it was not loaded"
            ) from exc
        raise PackFormatError(f"{path} is not {expected} (unreadable)") from exc
    except Exception as exc:  # hostile bytes can break the reader in many ways
        raise PackFormatError(
            f"{path} is not {expected} (unreadable, truncated or another format)"
        ) from exc
