"""The device a :class:`~packtool.config.TrainConfig` names, resolved where it is used (the
config checks only its name: whether a GPU is there is a question for torch)."""

from __future__ import annotations

import torch

from .config import check_device_name
from .errors import PackToolError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA if available else CPU; a CUDA request without CUDA is an error."""
    check_device_name(str(device))
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(str(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PackToolError("CUDA was requested but is not available; use `device=cpu` or "
                            "`device=auto`")
    return dev
