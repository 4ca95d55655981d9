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


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like safetensors (an 8-byte length, then ``{``)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def is_pack_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a file that holds a pack: an archive or a model file (a
    ``torch.save`` zip). Anything else is not loaded as a pack (e.g. it may be ONNX)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head == ZIP_MAGIC or is_safetensors(path)
