"""The owner index's encodings, side by side: how each file stores ``owners[L]``.

Owners are uint8, ``0`` free and ``k`` task ``k`` (``1..T``), flat in row-major order. Three
encodings, one per format that needs one (specified in ``docs/formats.md``):

* **bit-packed, least significant bit first** (:func:`pack_bits`, :func:`unpack_bits`): archive
  formats 1-3, read for the files they wrote; ``b = ceil(log2(T + 1))`` bits per weight
  (:func:`owner_bits`), value ``i`` in stream bits ``i*b .. i*b+b-1``, stream bit ``j`` bit
  ``j mod 8`` of byte ``j div 8``;
* **bit planes, most significant bit first** (:func:`pack_planes`): the multi-task ONNX file,
  where a graph compares the task with every owner bit by bit: plane ``j`` holds bit ``j`` of
  every owner, eight weights a byte, the first weight in the byte's high bit;
* **entropy-coded** (:func:`encode_owners`, :func:`decode_owners`): archive format 4, an ANS
  stream (`constriction <https://bamler-lab.github.io/constriction/>`_ 0.5's stack coder) under
  the layer's own owner counts: within a fraction of a percent of the index's empirical entropy
  (about 1.7 bits at 3 tasks, 2.1 at 5, 2.6 at 16, where packing takes 2, 3 and 5).

The two bit orders are the formats' own: LSB-first packing is NumPy's
``packbits(bitorder="little")`` of a value's bits; MSB-first planes keep the first weight in the
bit a byte comparison reads first.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch
from torch import Tensor

from ..method import MAX_TASKS

_CHUNK = 2**23  # weights per packing step (a multiple of 8): bounds temporary memory
#: Byte values of the bits of a plane's byte, first weight first (the high bit).
PLANE_BITS = tuple(1 << (7 - i) for i in range(8))


# ------------------------------------------------------------------------------------------------
# Bit-packed, LSB first (archive formats 1-3)
# ------------------------------------------------------------------------------------------------


def owner_bits(tasks: int) -> int:
    """Bits per owner index for ``tasks`` tasks: ``ceil(log2(tasks + 1))`` (values 0..tasks)."""
    if not 1 <= tasks <= MAX_TASKS:
        raise ValueError(f"tasks must be in 1..{MAX_TASKS}, got {tasks}")
    return tasks.bit_length()


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack ``values`` (uint8, any shape, each ``< 2**bits``) LSB-first into ``bits`` per value.

    Returns:
        uint8 ``[ceil(values.numel() * bits / 8)]``: value ``i`` in stream bits
        ``i*bits .. i*bits+bits-1``; stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``.
    """
    flat = values.detach().reshape(-1).to("cpu", torch.uint8)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if bits == 8:
        return flat.clone()
    if flat.numel() and int(flat.max()) >= 1 << bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    # 8 values fill exactly `bits` bytes: pack groups of 8 into one int64 word (<= 56 bits used).
    shifts = torch.arange(8, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    out = []
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK].to(torch.int64)
        pad = -chunk.numel() % 8
        if pad:
            chunk = torch.cat([chunk, chunk.new_zeros(pad)])
        words = (chunk.view(-1, 8) << shifts).sum(dim=1)
        out.append(((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1))
    packed = torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)
    return packed[:math.ceil(flat.numel() * bits / 8)].clone()


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: uint8 ``[count]`` from ``ceil(count * bits / 8)`` bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError("packed owners must be a 1-D uint8 tensor")
    if packed.numel() != math.ceil(count * bits / 8):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {count} x {bits} bits")
    if bits == 8:
        return packed.clone()
    shifts = torch.arange(8, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    mask = (1 << bits) - 1
    step = _CHUNK // 8 * bits  # bytes holding _CHUNK values
    out = []
    for start in range(0, packed.numel(), step):
        chunk = packed[start:start + step].to(torch.int64)
        pad = -chunk.numel() % bits
        if pad:
            chunk = torch.cat([chunk, chunk.new_zeros(pad)])
        words = (chunk.view(-1, bits) << byte_shifts).sum(dim=1)
        out.append(((words[:, None] >> shifts) & mask).to(torch.uint8).reshape(-1))
    values = torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)
    return values[:count].clone()


# ------------------------------------------------------------------------------------------------
# Bit planes, MSB first (the multi-task ONNX file)
# ------------------------------------------------------------------------------------------------


def pack_planes(owners: Tensor, bits: int) -> Tensor:
    """uint8 ``[bits, ceil(n / 8)]``: bit ``j`` of each owner (flat, row-major), eight a byte,
    the first value in the high bit."""
    flat = owners.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 8)
    weights = torch.tensor(PLANE_BITS, dtype=torch.int32)
    planes = [(((flat.int() >> j) & 1) * weights).sum(1).to(torch.uint8) for j in range(bits)]
    return torch.stack(planes)


# ------------------------------------------------------------------------------------------------
# Entropy-coded (archive format 4)
# ------------------------------------------------------------------------------------------------


# constriction is a compiled extension: its submodules are attributes, not importable modules.
AnsCoder = constriction.stream.stack.AnsCoder
Categorical = constriction.stream.model.Categorical


def encode_owners(owners: Tensor, symbols: int) -> tuple[Tensor, Tensor]:
    """``(words, counts)`` of one layer's uint8 owner index (any shape); ``symbols = T + 1``.

    Returns int32 ``[words]`` and int64 ``[symbols]`` CPU tensors.
    """
    flat = owners.detach().reshape(-1).cpu().numpy().astype(np.int32)
    counts = np.bincount(flat, minlength=symbols).astype(np.int64)
    if len(counts) != symbols:
        raise ValueError(f"owner values above {symbols - 1}")
    if flat.size == 0:
        return torch.zeros(0, dtype=torch.int32), torch.from_numpy(counts)
    coder = AnsCoder()
    coder.encode_reverse(flat, _model(counts))
    words = coder.get_compressed().astype(np.uint32).view(np.int32)
    return torch.from_numpy(words.copy()), torch.from_numpy(counts)


def decode_owners(words: Tensor, counts: Tensor, numel: int) -> Tensor:
    """The uint8 owner index ``[numel]`` of one layer, from :func:`encode_owners`'s output.

    Raises:
        ValueError: the counts do not describe ``numel`` owners, or the stream does not decode
            to values with exactly those counts (a damaged or forged file).
    """
    if (words.dtype != torch.int32 or words.dim() != 1 or counts.dtype != torch.int64
            or counts.dim() != 1 or len(counts) < 2 or bool((counts < 0).any())
            or int(counts.sum()) != numel):
        raise ValueError(f"owner counts {counts.tolist()[:8]} do not describe {numel} weights")
    if numel == 0:
        return torch.zeros(0, dtype=torch.uint8)
    try:
        coder = AnsCoder(words.numpy().view(np.uint32).copy())
        decoded = coder.decode(_model(counts.numpy()), numel)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise ValueError(f"the owner stream does not decode: {type(exc).__name__}") from None
    if not np.array_equal(np.bincount(decoded, minlength=len(counts)), counts.numpy()):
        raise ValueError("the owner stream does not decode to its counts")
    return torch.from_numpy(decoded.astype(np.uint8))


def _model(counts: np.ndarray) -> Categorical:
    return Categorical(counts.astype(np.float64) / counts.sum(), perfect=False)
