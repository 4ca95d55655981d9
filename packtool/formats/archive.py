"""The shared-weight archive: every task of a pack in one compact safetensors file.

This module is the format's spec, its checksum and its one validating reader
(:func:`read_archive`); :mod:`packtool.exporters.archive` writes it.

A pack's ``model.pt`` keeps the whole network, free weights and initial state included, for
training. The archive keeps only what serving the existing tasks needs: each owned weight once,
the owner index entropy-coded (bit-packed before format 4), every task's head and private
state. For ``T`` tasks its size is close to the entropy floor ``owned weights x 4 bytes + all
prunable weights x H bits + heads + private state (+ feature statistics)``, ``H`` the owner
index's empirical entropy per weight (at most ``b = ceil(log2(T + 1))``, the bit-packed cost).

Archive format (``pack.safetensors``, format version 4)
-------------------------------------------------------
One `safetensors <https://github.com/huggingface/safetensors>`_ file: an 8-byte little-endian
header length, a JSON header, then the raw little-endian bytes of every tensor. No pickle, no
code. ``T`` is the number of tasks, ``k`` a task index ``1..T``, ``L`` the ``state_dict`` name
of a prunable weight, as the pack recorded it (every weight matrix but the classifier's, see
:mod:`packtool.models`; e.g. ``features.0.weight``,
``encoder.layers.0.self_attention.in_proj_weight``).

Metadata (the header's ``__metadata__``; every value is a string):

======================  ============================================================================
key                     value
======================  ============================================================================
``format``              ``packtool.archive``; any other value (or none): not an archive
``format_version``      ``1``, ``2`` or ``3``; readers refuse a larger number. ``2`` when a task
                        carries ``prune_reason``/``prune_search`` (how its ratio was chosen),
                        ``3`` when one carries ``temperature``
``packtool_version``    the packtool that wrote the file
``spec``                JSON ``{"arch", "input_size": [C, H, W], "kwargs", "mean", "std"}``: how
                        to build the network (a torchvision model name with ``weights=None`` and
                        ``kwargs``, packtool's ``mlp``/``lenet``, or ``package.module:function``)
``policy``              ``per_task`` (task ``k`` uses ``private/k/*``) or ``frozen`` (every
                        task uses ``private/1/*``, the only private tensors stored)
``free_init``           optional: ``reinit`` or ``kept``, how a task added to the pack read back
                        starts its free weights (absent: ``zero``); an archive keeps no free
                        values, so ``kept`` starts from zero after it
``pretrained``          optional: ``true`` if the network started from pretrained weights
``planned_tasks``       optional: how many tasks the pack is meant to hold (``init --tasks``),
                        a decimal number 1..255; a task added to the pack read back reserves
                        room for the rest of the plan
``tasks``               JSON list in index order; item ``k-1`` is task ``k``: ``{"name",
                        "index", "classes" (names in logit order), "data", "prune", "hparams",
                        "metrics", "created"}`` and, in version 2, ``"prune_reason"`` and
                        ``"prune_search"`` where a task has them; in version 3,
                        ``"temperature"`` (a number: divide the task's logits by it before the
                        softmax for task-free scores; absent means 1)
``layers``              JSON list ``[[L, shape], ...]`` of the prunable weights, in network order
``bits``                ``b``, owner-index bits per weight: ``ceil(log2(T + 1))``, 1..8 (the
                        packed width in formats 1-3; recorded, and checked, in format 4)
``owner_coding``        format 4: ``ans``, the owner index entropy-coded (below); absent in
                        formats 1-3, whose owner index is bit-packed
``float_dtype``         ``float32`` or ``float16``: how floating tensors are stored (``--half``);
                        readers convert them to float32
``preprocessing``       JSON ``{"input_size": [C, H, W], "mean": [...], "std": [...]}``: a
                        network input is the image resized to ``H x W``, ``/ 255``, then
                        ``(x - mean) / std``
``source_sha256``       SHA-256 (hex) of the model file the archive was made from, or empty
``checksum``            SHA-256 (hex) of the payload, see below
======================  ============================================================================

Tensors:

===================  ================================  ========================================
name                 dtype, shape                      content
===================  ================================  ========================================
``shared/L``         float ``[n_owned]``               the weights of ``L`` owned by some task
                                                       (owner != 0), in row-major flat order
``owners/L``         int32 ``[words]``                 owner of every weight of ``L``, ANS-coded
                                                       (formats 1-3: uint8, packed, see below)
``owner_counts/L``   int64 ``[T + 1]``                 format 4: how many weights each owner
                                                       value has (the ANS model)
``head/k/weight``    float ``[classes_k, in]``         task ``k``'s classifier weight
``head/k/bias``      float ``[classes_k]``             its bias (if the classifier has one)
``private/k/KEY``    any, as in ``state_dict``         task ``k``'s private backbone state under
                                                       its ``state_dict`` key ``KEY`` (biases,
                                                       norm weights and running statistics)
===================  ================================  ========================================

Version 3 may add, per task, what the ``mahalanobis`` task score needs, fitted on task ``k``'s
validation split: ``features/k/means`` ``[classes seen, in]`` (float), the class means of the
classifier's input, and ``features/k/basis`` ``[r, in]`` (float) and ``features/k/scale``
``[1]`` (float32 even in a float16 archive: it may exceed float16's range), the inverse of
their shrunk within-class covariance as ``scale * I - basis.T @ basis``.

Format 4 stores each layer's owner index entropy-coded instead of packed: ``owners/L`` is an
int32 ``[words]`` ANS stream and ``owner_counts/L`` an int64 ``[T + 1]`` table of its owner
counts; :mod:`packtool.formats.owner_code` specifies both (decoding needs the ``constriction``
library, version 0.5). Formats 1-3 (no ``owner_coding``) store ``owners/L`` bit-packed:

Owner packing (formats 1-3): the owner of flat weight ``i`` (``0`` free, ``k`` task ``k``) is
stored in bits ``i*b .. i*b+b-1`` of a bit stream, least significant bit first; stream bit
``j`` is bit ``j mod 8`` of byte ``j div 8`` (least significant first, NumPy's
``bitorder="little"``).
Unused bits of the last byte are zero. Equivalently::

    owner(i) = (int.from_bytes(packed, "little") >> (i * b)) & (2**b - 1)
    owners = np.unpackbits(packed, bitorder="little")[: n * b].reshape(n, b) @ (1 << np.arange(b))

Rebuilding task ``k`` with plain ``safetensors`` (and ``constriction`` for format 4's owners):
for every ``L``, ``w = zeros(numel)``,
``w[owners != 0] = shared/L``, then ``w[owners > k] = 0`` (later tasks' weights are not part
of task ``k``), reshape to ``shape``. Build the network from ``spec``, replace its classifier
(the last ``nn.Linear`` in module order) by ``Linear(in, classes_k)``, and load the weights,
``head/k/*`` under the classifier's name and ``private/j/*`` (``j = k``, or ``1`` under policy
``frozen``). Run it in eval mode.

Checksum (safetensors has none): SHA-256 over, in this order, for every tensor in sorted name
order: its name, its safetensors dtype code (``F32``, ``F16``, ``U8``, ``I64``, ...), its shape
as decimal numbers joined by ``,`` (empty for a scalar) and its raw bytes; then for every
metadata key but ``checksum`` in sorted order: the key and the value. Each of these fields is
fed as its length in bytes (8-byte little-endian unsigned) followed by its bytes (strings as
UTF-8). Sorting is by Unicode code point.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import Tensor

from .._version import __version__
from ..errors import PackFormatError, PackToolError, TaskError, one_line
from ..method import FREE, MAX_TASKS, OWNER_DTYPE
from ..models import ArchSpec, build_network
from ..pack import Pack
from ..records import TaskRecord
from .digest import tensor_bytes
from .owner_code import decode_owners

FORMAT = "packtool.archive"
FORMAT_VERSION = 4  # the newest version this packtool reads and writes

# safetensors' dtype codes: part of the checksum, so the spec does not depend on torch's names.
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on the JSON header
_CHUNK = 2**23  # weights per packing step (a multiple of 8): bounds temporary memory


# ------------------------------------------------------------------------------------------------
# Owner-index bit packing
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
    flat = values.detach().reshape(-1).to("cpu", OWNER_DTYPE)
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


def checksum(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 hex of the payload, as the module docstring defines it."""
    h = hashlib.sha256()

    def field(data: bytes | memoryview) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    for name in sorted(tensors):
        t = tensors[name]
        field(name.encode())
        field(DTYPE_CODES[t.dtype].encode())
        field(",".join(str(d) for d in t.shape).encode())
        field(tensor_bytes(t))
    for key in sorted(metadata):
        if key != "checksum":
            field(key.encode())
            field(metadata[key].encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def read_archive(path: str | os.PathLike) -> Pack:
    """Read an archive written by :func:`write_archive` into a :class:`~packtool.pack.Pack`.

    The pack serves every archived task (``model_for`` works without ``model.pt``): shared
    weights hold the owned values and zeros for free weights, as in the original pack after its
    first task. ``initial_private`` and ``pretrained_head`` are empty: they only seed the first
    task, and an archive always has one. Half-precision archives read back as float32.

    Raises:
        PackFormatError: not an archive (foreign safetensors, random bytes), truncated, failing
            its checksum (e.g. a flipped byte), or written in a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise PackToolError(f"archive {path} does not exist")
    return archive_from_bytes(path.read_bytes(), source=str(path))


def archive_from_bytes(data: bytes, source: str = "archive") -> Pack:
    """:func:`read_archive` of the file's bytes; ``source`` names it in error messages."""
    metadata = _read_metadata(data, source)
    if metadata.get("format") != FORMAT:
        raise PackFormatError(f"{source} is a safetensors file but not a packtool archive")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) < 1:
        raise PackFormatError(f"{source} has an invalid archive format version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise PackFormatError(
            f"{source} uses archive format {version}, newer than this packtool ({__version__}, "
            f"format {FORMAT_VERSION}); upgrade packtool to read it"
        )
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise PackFormatError(
            f"{source} is truncated or damaged: {one_line(exc, first=True)}"
        ) from None
    if metadata.get("checksum") != checksum(tensors, metadata):
        raise PackFormatError(
            f"{source} failed its checksum: the archive is corrupted or was modified"
        )
    try:
        return _pack_from_payload(tensors, metadata)
    except (KeyError, TypeError, ValueError, AttributeError, TaskError) as exc:
        raise PackFormatError(f"{source} is damaged: {type(exc).__name__}: {exc}") from None


def _read_metadata(data: bytes, source: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, or PackFormatError if it is not one."""
    not_safetensors = PackFormatError(
        f"{source} is not a packtool archive (not a safetensors file)"
    )
    if len(data) < 8:
        raise not_safetensors
    size = int.from_bytes(data[:8], "little")
    if size > min(_HEADER_LIMIT, len(data) - 8) or data[8:9] != b"{":
        raise not_safetensors
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise not_safetensors from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        metadata = {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise not_safetensors
    return metadata


def _pack_from_payload(tensors: dict[str, Tensor], metadata: dict[str, str]) -> Pack:
    """The pack, from a payload whose checksum matched; the Pack checks its invariants."""
    metas = json.loads(metadata["tasks"])
    if not isinstance(metas, list) or not 1 <= len(metas) <= MAX_TASKS:
        raise ValueError("the task table is empty or too long")
    bits = int(metadata["bits"])
    if bits != owner_bits(len(metas)):
        raise ValueError(f"{bits} owner bits do not fit {len(metas)} tasks")
    half = metadata["float_dtype"] == "float16"
    layers = json.loads(metadata["layers"])
    shared: dict[str, Tensor] = {}
    owners: dict[str, Tensor] = {}
    coding = metadata.get("owner_coding", "bits")
    if coding not in ("bits", "ans"):
        raise ValueError(f"unknown owner coding {coding!r}")
    if coding == "ans":  # decoding allocates what the file says: check it against the network
        _check_layer_shapes(ArchSpec.from_dict(json.loads(metadata["spec"])), layers)
    for key, shape in layers:
        numel = math.prod(shape)  # unpack_bits checks it against the stored bytes first
        own = (decode_owners(tensors[f"owners/{key}"], tensors[f"owner_counts/{key}"], numel)
               if coding == "ans" else unpack_bits(tensors[f"owners/{key}"], bits, numel))
        owned = own != FREE
        values = _float32(tensors[f"shared/{key}"], half)
        if values.dim() != 1 or values.numel() != int(owned.sum()):
            raise ValueError(f"{key} stores {values.numel()} weights for {int(owned.sum())} owned")
        weight = torch.zeros(numel, dtype=values.dtype)
        weight[owned] = values
        shared[key], owners[key] = weight.view(shape), own.view(shape)
    kinds = ("shared", "owners", "owner_counts") if coding == "ans" else ("shared", "owners")
    known = {f"{kind}/{key}" for key, _ in layers for kind in kinds}
    unknown = [n for n in tensors
               if n not in known and not n.startswith(("head/", "private/", "features/"))]
    if unknown:
        raise ValueError(f"unexpected tensors {sorted(unknown)[:3]}")
    heads = _group(tensors, "head", len(metas), half)
    private = _group(tensors, "private", len(metas), half)
    stats = _group(tensors, "features", len(metas), half)
    tasks = [TaskRecord(head=heads[i], private=private[i], feature_stats=stats[i], **m)
             for i, m in enumerate(metas, start=1)]
    # initial_private only seeds a pack's first task; an archive always has one, so it is empty.
    return Pack(ArchSpec.from_dict(json.loads(metadata["spec"])), shared, owners, {}, tasks,
                policy=metadata["policy"], free_init=metadata.get("free_init", "zero"),
                pretrained=metadata.get("pretrained") == "true",
                planned_tasks=int(metadata["planned_tasks"]) if "planned_tasks" in metadata
                else None)


def _check_layer_shapes(spec: ArchSpec, layers: list) -> None:
    """Every recorded layer is a parameter of ``spec``'s network with the recorded shape
    (built on the meta device: shapes only, no memory)."""
    with torch.device("meta"):
        shapes = {k: list(p.shape) for k, p in build_network(spec).named_parameters()}
    for key, shape in layers:
        if shapes.get(key) != shape:
            raise ValueError(f"layer {key} {shape} is not in the network of {spec.arch}")


def _group(tensors: Mapping[str, Tensor], kind: str, count: int, half: bool
           ) -> dict[int, dict[str, Tensor]]:
    """``kind/k/name`` tensors as ``{k: {name: tensor}}`` for ``k`` in ``1..count``."""
    groups: dict[int, dict[str, Tensor]] = {k: {} for k in range(1, count + 1)}
    for full in sorted(n for n in tensors if n.startswith(kind + "/")):  # stable dict order
        _, index, name = full.split("/", 2)
        k = int(index)
        if k not in groups or not name:
            raise ValueError(f"tensor {full!r} names no task")
        groups[k][name] = _float32(tensors[full], half)
    return groups


def _float32(t: Tensor, half: bool) -> Tensor:
    return t.to(torch.float32) if half and t.dtype == torch.float16 else t
