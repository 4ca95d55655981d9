"""Run by tests/test_distributed.py under torchrun: add one task with the Python API."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from packtool import Pack, PackToolError, TrainConfig, add_task, load_task_data
from packtool.distributed import init_from_env
from packtool.formats.digest import digest as tensor_digest


def main() -> int:
    model, data_name, classes, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    world = init_from_env("cpu")
    try:
        pack = Pack.load(model)
        x = torch.randn(6, *pack.spec.input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            first_before = pack.model_for("first")(x)
        data = load_task_data(data_name, pack.preprocess, classes=classes or None)
        config = TrainConfig(epochs=3, finetune_epochs=1, lr=0.05, batch_size=16, device="cpu")
        pack, result = add_task(pack, "second", data, 0.5, config)
    except PackToolError as exc:
        print(f"rank {world.rank}: Error: {exc}", file=sys.stderr)
        dist.destroy_process_group()
        return 1
    with torch.no_grad():
        first_after = pack.model_for("first")(x)
    report = {
        "rank": world.rank,
        "world": world.size,
        "digest": tensor_digest({**pack.shared,
                                 **{f"owners/{k}": v for k, v in pack.owners.items()}}),
        "accuracy": result.accuracy,
        "first_unchanged": torch.equal(first_before, first_after),
    }
    (out / f"rank{world.rank}.json").write_text(json.dumps(report))
    if world.is_main:
        pack.save(model)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
