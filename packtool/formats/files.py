"""One ``load(path)`` for every file that holds a pack: a model file or an archive, told apart
once by their first bytes (:mod:`.sniff`)."""

from __future__ import annotations

import os

import torch

from ..pack import Pack
from .archive import read_archive
from .sniff import is_safetensors


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Pack:
    """The pack in ``path``: a ``model.pt`` (:meth:`Pack.load`) or an archive
    (:func:`~.archive.read_archive`, which serves every archived task but cannot train)."""
    if is_safetensors(path):
        return read_archive(path).to(device)
    return Pack.load(path, device)
