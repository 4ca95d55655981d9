"""Training step time with PackNet masking vs plain dense training of the same network.

Same network, batch and optimizer, timed in one run, interleaved. Two PackNet phases of task 2
(task 1 owns half of every layer):

* training: task 1's weights active and frozen, the free ones trained. The mask is all ones, so
  the prune hook passes the weight through (no multiply); the frozen-weight guard runs after
  each step.
* fine-tuning: task 2 owns half of the rest; the released quarter is zero, as add-task leaves
  it, so the hook skips the multiply here too (:meth:`packtool.method.PackNetPruning.apply_mask`)
  and the guard keeps those weights zero.

Targets: at most 1.15x (issue 3); fine-tuning at most 1.05x (issue 14).
Part of ``python -m benchmarks`` (cost); standalone: ``python benchmarks/masking_overhead.py
[CASE ...]`` prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from torch import nn

from packtool import Pack
from packtool.loop import FrozenWeightGuard
from packtool.method import Phase, assign_owners, packed_tensors, select_all
from packtool.models import ArchSpec, build_network

CASES = {
    "lenet-3x32x32": ("lenet", (3, 32, 32), {"width": 32}, 64),
    "mlp-1x28x28": ("mlp", (1, 28, 28), {"hidden": 1024}, 128),
    "resnet18-3x64x64": ("resnet18", (3, 64, 64), {}, 32),
}


def _packnet_net(arch, size, kwargs, phase: Phase = Phase.TRAIN):
    pack = Pack.create(arch, size, kwargs=kwargs)
    pack.owners = assign_owners(pack.shared, pack.owners, task=1, ratio=0.5)  # task 1 owns half
    if phase is Phase.FINETUNE:  # task 2 trained and pruned: it owns half of the rest
        pack.owners = assign_owners(pack.shared, pack.owners, task=2, ratio=0.5)
        for key, weight in pack.shared.items():  # released: zero, as add-task leaves them
            weight.masked_fill_(pack.owners[key] == 0, 0.0)
    head = pack.pretrained_head or {
        k: v for k, v in build_network(pack.spec).state_dict().items()
        if k.startswith(pack.anatomy().classifier + ".")
    }
    head = {k.rsplit(".", 1)[-1]: v for k, v in head.items()}
    net = pack.network(2, phase, head=head, private=pack.initial_private)
    select_all(net, 2, phase)
    return net, FrozenWeightGuard(packed_tensors(net), 2, phase)


def _step(net: nn.Module, opt, x, y, guard=None) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    if guard is not None:
        guard.restore()


def measure(case: str, steps: int = 20) -> dict:
    arch, size, kwargs, batch = CASES[case]
    return {"case": case, **measure_network(arch, size, kwargs, batch, steps)}


def measure_network(arch: str, size: tuple[int, int, int], kwargs: dict, batch: int,
                    steps: int = 20, warmup: int = 3) -> dict:
    """Median step times of dense, PackNet training and PackNet fine-tuning of ``arch``."""
    torch.manual_seed(0)
    dense = build_network(ArchSpec(arch, size, kwargs))
    variants = {"dense": (dense, None)}
    for name, phase in (("train", Phase.TRAIN), ("finetune", Phase.FINETUNE)):
        variants[name] = _packnet_net(arch, size, kwargs, phase)
    x = torch.randn(batch, *size)
    y = torch.randint(0, 10, (batch,))
    opts = {name: torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
            for name, (net, _) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(steps + warmup):  # interleaved, so drift in machine load hits all alike
        for name, (net, guard) in variants.items():
            start = time.perf_counter()
            _step(net, opts[name], x, y, guard)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    d, p, f = (statistics.median(times[n]) for n in ("dense", "train", "finetune"))
    return {"batch": batch, "dense_ms": round(d * 1e3, 2),
            "packnet_ms": round(p * 1e3, 2), "ratio": round(p / d, 3),
            "finetune_ms": round(f * 1e3, 2), "finetune_ratio": round(f / d, 3)}


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    print(json.dumps([measure(n) for n in names]))
