"""The owner index, entropy-coded: how archive format 4 stores ``owners/L``.

The owner index takes ``ceil(log2(T + 1))`` bits per weight when bit-packed (formats 1 to 3),
but its entropy is lower: with the usual schedules about 1.7 bits at 3 tasks, 2.1 at 5, 2.6 at
16. Format 4 codes each layer's owners with asymmetric numeral systems (ANS), using the
`constriction <https://bamler-lab.github.io/constriction/>`_ library's stack coder, under a
categorical model made of the layer's own owner counts (stored beside the stream), so each
layer costs within a fraction of a percent of its empirical entropy.

Layer ``L`` with ``n`` weights and owners ``o_0 .. o_{n-1}`` (flat, row-major, values ``0..T``):

* ``owner_counts/L``, int64 ``[T + 1]``: ``counts[v]`` = number of weights with owner ``v``
  (``sum(counts) == n``);
* ``owners/L``, int32 ``[words]``: the compressed words of
  ``AnsCoder().encode_reverse(o, Categorical(counts / n, perfect=False))``
  (``constriction.stream.stack.AnsCoder``, ``constriction.stream.model.Categorical``), each
  word's 32 bits stored as an int32. Decode with
  ``AnsCoder(words.view(uint32)).decode(Categorical(counts / n, perfect=False), n)``.

The model's probabilities must be quantized exactly as the writer quantized them, so readers use
constriction 0.5 (``perfect=False``: its "leaky" quantization, which gives every owner value a
nonzero probability).
"""

from __future__ import annotations

import constriction
import numpy as np
import torch
from torch import Tensor

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
