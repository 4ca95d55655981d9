"""What a file is, told from its first bytes (no torch: the command line and the ONNX runtime
ask before loading anything).

The first bytes tell: safetensors (an archive) starts with an 8-byte header length and then
``{``, which neither a ``torch.save`` zip nor ONNX (protobuf) can; a model file is a
``torch.save`` zip, starting ``PK\x03\x04``, where an ONNX file starts with a ``ModelProto``
field tag (``P`` would be field 10, which ``ModelProto`` does not have).
"""

from __future__ import annotations

import os
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"


def _head(path: str | os.PathLike, size: int) -> bytes:
    """The first ``size`` bytes of the file at ``path`` (fewer if it is shorter; none if it is
    not a file)."""
    path = Path(path)
    if not path.is_file():
        return b""
    with open(path, "rb") as f:
        return f.read(size)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like safetensors (an 8-byte length, then ``{``)."""
    return _head(path, 9)[8:9] == b"{"


def is_pack_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a file that holds a pack: an archive or a model file (a
    ``torch.save`` zip). Anything else is not loaded as a pack (e.g. it may be ONNX)."""
    return _head(path, 4) == ZIP_MAGIC or is_safetensors(path)


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like ONNX: ``ModelProto``'s field 1 (``ir_version``, a varint:
    tag byte ``0x08``), which ONNX writers serialize first."""
    return _head(path, 1) == b"\x08"


def other_kind(path: str | os.PathLike) -> str | None:
    """What a file given as a model file is instead, for an error (``... is not a packtool
    model file but <this>``), or None: an archive, an ONNX file or a plan, each for another
    command."""
    if is_safetensors(path):
        return ("a safetensors file (an archive serves its tasks but is not trained further: "
                "add tasks to the model file it came from; plain weights start a network "
                "with `init --weights`)")
    if is_onnx(path):
        return "an ONNX file (serve it with `packtool predict`; `packtool info` says what it holds)"
    if Path(path).suffix == ".toml":
        return "a TOML file (a plan? run it with `packtool run`)"
    return None
