"""The model file, ``model.pt``: a pack's full training state.

Format (format version 3)
-------------------------
A ``torch.save`` file of tensors and plain values only, read back with
``torch.load(weights_only=True)`` (no code can run on load), written atomically::

    {
      "format": "packtool.pack",        # marker: anything else is a foreign file
      "version": 1 | 2 | 3,             # format version; newer versions are refused
      "meta": "<JSON string>",          # spec, policy, tasks' metadata (see Pack.meta())
      "shared":  {"<key>": float tensor},   # prunable weights by state_dict key
      "owners":  {"<key>": uint8 tensor},   # same shapes; 0 free, k task k
      "initial_private": {key: tensor},  # task-private state before any task (from --weights)
      "pretrained_head": {key: tensor},  # the original classifier, if weights were given
      "heads":   [{"weight", "bias"}],   # per task, in task order
      "private": [{key: tensor}],        # per task (empty for tasks > 1 under policy 'frozen')
      "feature_stats": [{"means", "basis", "scale"}],  # per task; version 3, if any task has them
      "digest":  "<sha256 hex>",        # :func:`~.digest.digest` of every other entry
    }

Version 2 adds two optional keys to a task's metadata, ``prune_reason`` and ``prune_search``
(how its prune ratio was decided); version 3 adds ``temperature`` (the task's softmax
temperature fitted on validation, for task-free inference) and the ``feature_stats`` key (its
head's feature statistics, for the ``mahalanobis`` task score); see
:class:`packtool.records.TaskRecord`. A file is written in the oldest version that holds its
records (:func:`packtool.records.format_version`): version 1 when no task has these keys, so
packtool 0.1.0 reads it; a packtool that knows an older version refuses a newer file as too new
instead of misreading it.

This module checks the file layer (marker, version, digest); what the content must satisfy
(owners uint8 and shaped like the weights, no owner beyond the task count, task ``k`` at
position ``k``, unique names) is checked where every reader's pack is made, in
:class:`packtool.pack.Pack`.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import PackFormatError, PackToolError
from ..fileio import atomic_write, load_weights_only
from .digest import digest

FORMAT = "packtool.pack"
FORMAT_VERSION = 3  # the newest version this packtool reads and writes


def encode(content: Mapping[str, Any], version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The file's dictionary: ``content`` (CPU tensors, plain values) with marker, ``version``
    and digest."""
    state: dict[str, Any] = {"format": FORMAT, "version": version, **content}
    state["digest"] = digest(state)
    return state


def write(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write :func:`encode`'s dictionary to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


def to_bytes(state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def read(path: str | os.PathLike) -> Any:
    """The loaded (not yet checked) content of the model file at ``path``."""
    path = Path(path)
    if not path.exists():
        raise PackToolError(f"{path} does not exist (create it with `packtool init`)")
    if path.is_dir():
        raise PackToolError(f"{path} is a directory, not a model file")
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
