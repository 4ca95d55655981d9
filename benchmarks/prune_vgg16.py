"""Pruning VGG-16 (138M weights, random init): time and peak memory of one PackNet prune.

Target (issue 3): under 10 s and peak RSS under 3x the model's bytes. Runs in its own process
so the peak is this measurement's alone: ``python -m benchmarks`` (the cost part) starts it as
``python benchmarks/prune_vgg16.py ARCH`` (any torchvision name; default vgg16), which prints JSON.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from packtool.method import assign_owners
from packtool.models import ArchSpec, anatomy, build_network


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> bool:
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(arch: str = "vgg16", ratio: float = 0.5) -> dict:
    with torch.device("meta"):  # shapes only; real weights are drawn below without a model copy
        net = build_network(ArchSpec(arch, (3, 224, 224)))
    anat = anatomy(net)
    process_baseline = _rss_bytes("VmRSS")  # torch and torchvision loaded, no weights yet
    g = torch.Generator().manual_seed(0)
    shapes = {k: p.shape for k, p in net.named_parameters()}
    weights = {k: torch.randn(shapes[k], generator=g) for k in anat.prunable}
    del net
    owners = {k: torch.zeros(w.shape, dtype=torch.uint8) for k, w in weights.items()}
    model_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    n_weights = sum(w.numel() for w in weights.values())
    exact_peak = _reset_peak()
    rss_before = _rss_bytes("VmRSS")
    start = time.perf_counter()
    new = assign_owners(weights, owners, task=1, ratio=ratio)
    with torch.no_grad():
        for key, w in weights.items():
            w.masked_fill_(new[key] == 0, 0.0)
    seconds = time.perf_counter() - start
    peak = _rss_bytes("VmHWM")
    released = sum(int((o == 0).sum()) for o in new.values())
    return {
        "arch": arch,
        "prunable_weights": n_weights,
        "released": released,
        "model_bytes": model_bytes,
        "seconds": round(seconds, 2),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "process_baseline_bytes": process_baseline,
        # the model's share of the peak: what weights, owners and pruning add to the process
        "peak_over_model": round((peak - process_baseline) / model_bytes, 2),
        "peak_is_prune_only": exact_peak,
    }


if __name__ == "__main__":
    print(json.dumps(measure(*(sys.argv[1:2] or ["vgg16"]))))
