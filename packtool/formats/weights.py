"""State_dict files given as a network's initial weights (``init --weights``): a ``.pt`` or
``.pth`` file of tensors (read with ``weights_only=True``) or a ``.safetensors`` file.
(torchvision's pretrained weights, ``DEFAULT``, are found by :func:`packtool.models.
pretrained_weights_file`.)"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..errors import PackFormatError, PackToolError
from .model_file import is_tensor_dict, load_torch


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state_dict from a local ``.pt``/``.pth`` (weights_only) or ``.safetensors`` file.

    A checkpoint that nests the state_dict under ``state_dict`` or ``model`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise PackToolError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise PackFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    obj = load_torch(path, "a state_dict file (.pt, .pth or .safetensors)")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not is_tensor_dict(obj):
        raise PackFormatError(f"{path} does not hold a state_dict of tensors")
    return obj
