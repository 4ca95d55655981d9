"""``packtool.save`` and ``packtool.load``: every file that holds a pack, the model file or the
archive, told apart once by their first bytes (:mod:`.sniff`)."""

from __future__ import annotations

import os

import torch

from ..pack import Pack
from . import model_file
from .archive import read_archive
from .sniff import is_safetensors


def save(pack: Pack, path: str | os.PathLike) -> None:
    """Write ``pack`` to ``path`` as a model file, atomically (temp file, fsync, rename); the
    whole training state, to add tasks to later (:mod:`.model_file`)."""
    model_file.save(pack, path)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Pack:
    """The pack in ``path``: a model file (:func:`save`) or an archive
    (:func:`~.archive.read_archive`, which serves every archived task but cannot train).

    Raises:
        PackFormatError: the file is neither, or is damaged, or comes from a newer packtool.
    """
    if is_safetensors(path):
        return read_archive(path).to(device)
    return model_file.load(path, device)
