"""Training step time with PackNet masking vs plain dense training of the same network.

Same network, batch and optimizer; the PackNet side trains task 2 (task 1's weights active and
frozen), which pays for the mask multiply in the forward pre-hook and the frozen-weight guard
after each step. Target (issue 3): at most 1.15x. Both are timed in one run, interleaved.
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
from packtool.method import Phase, assign_owners, select_all
from packtool.models import build_network
from packtool.training import FrozenWeightGuard

CASES = {
    "lenet-3x32x32": ("lenet", (3, 32, 32), {"width": 32}, 64),
    "mlp-1x28x28": ("mlp", (1, 28, 28), {"hidden": 1024}, 128),
    "resnet18-3x64x64": ("resnet18", (3, 64, 64), {}, 32),
}


def _packnet_net(arch, size, kwargs):
    pack = Pack.create(arch, size, kwargs=kwargs)
    pack.owners = assign_owners(pack.shared, pack.owners, task=1, ratio=0.5)  # task 1 owns half
    head = pack.pretrained_head or {
        k: v for k, v in build_network(pack.spec).state_dict().items()
        if k.startswith(pack.anatomy().classifier + ".")
    }
    head = {k.rsplit(".", 1)[-1]: v for k, v in head.items()}
    net = pack.network(2, Phase.TRAIN, head=head, private=pack.initial_private)
    layers = [net.get_submodule(n) for n in pack.anatomy().prunable]
    select_all(layers, 2, Phase.TRAIN)
    return net, FrozenWeightGuard(layers, 2, Phase.TRAIN)


def _step(net: nn.Module, opt, x, y, guard=None) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    if guard is not None:
        guard.restore()


def measure(case: str, steps: int = 20) -> dict:
    arch, size, kwargs, batch = CASES[case]
    torch.manual_seed(0)
    dense = build_network(Pack.create(arch, size, kwargs=kwargs).spec)
    packed, guard = _packnet_net(arch, size, kwargs)
    x = torch.randn(batch, *size)
    y = torch.randint(0, 10, (batch,))
    opts = {
        "dense": torch.optim.SGD(dense.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4),
        "packnet": torch.optim.SGD(packed.parameters(), lr=1e-3, momentum=0.9,
                                   weight_decay=1e-4),
    }
    times = {"dense": [], "packnet": []}
    for i in range(steps + 3):  # interleaved, so drift in machine load hits both alike
        for name, net, g in (("dense", dense, None), ("packnet", packed, guard)):
            start = time.perf_counter()
            _step(net, opts[name], x, y, g)
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    d, p = statistics.median(times["dense"]), statistics.median(times["packnet"])
    return {"case": case, "batch": batch, "dense_ms": round(d * 1e3, 2),
            "packnet_ms": round(p * 1e3, 2), "ratio": round(p / d, 3)}


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    print(json.dumps([measure(n) for n in names]))
