"""State_dict files given as a network's initial weights (``init --weights``): a ``.pt`` or
``.pth`` file of tensors (read with ``weights_only=True``) or a ``.safetensors`` file, or
torchvision's pretrained weights when they are in the local torch hub cache (``DEFAULT``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..errors import PackFormatError, PackToolError
from .model_file import load_torch

PRETRAINED = "DEFAULT"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
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


def is_tensor_dict(obj: Any) -> bool:
    """Whether ``obj`` is a dict of ``str`` names to tensors."""
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor)
                                         for k, v in obj.items())


def pretrained_weights_file(arch: str) -> Path:
    """torchvision's DEFAULT weights for ``arch`` if they are already in the local torch hub cache.

    Nothing is downloaded: without a cached copy this raises a PackToolError that says where to
    put the file (or to give it as ``weights``).
    """
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise PackToolError(
            f"`weights={PRETRAINED}`: {arch!r} has no pretrained torchvision weights; "
            "pass `weights=FILE` (a local state_dict) or none"
        ) from None
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise PackToolError(
            f"`weights={PRETRAINED}`: torchvision's {arch} weights are not cached at {cached} "
            f"and packtool downloads nothing; fetch {url} on a machine with network access and "
            "pass `weights=FILE` (or copy it to that path)"
        )
    return cached
