"""Write the format fixtures of this folder: ``python tests/formats/make_v1.py OUT_DIR``.

Run once with packtool 0.1.0 at commit 6fe07df (model file format 1, checkpoint format 1,
archive format 1), with ``tests/`` on ``PYTHONPATH`` for the ``nets`` architectures. The files
are kept in the repository so that every later packtool proves it still reads them
(``tests/test_formats.py``); do not regenerate them with a newer packtool.

* ``lenet-2tasks.pt``: a model file, lenet (width 4) on 1x8x8, two synthetic tasks.
* ``lenet-2tasks.safetensors``: its archive.
* ``lenet-1task.pt`` and ``lenet-1task.pt.add-task.ckpt``: the pack before task 2 and the
  checkpoint the add-task of task 2 left after its last epoch.
* ``transformer-init.pt``: ``nets:tiny_transformer`` with no task, split by the 0.1.0 rule
  (only convolutions and Linear packed; the attention input projections private).
"""

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from packtool import Pack, TrainConfig
from packtool.exporters import write_archive

CONFIG = TrainConfig(epochs=1, finetune_epochs=1, lr=0.05, batch_size=16, device="cpu")


class Task:
    """Separable random data (the duck type of packtool.data.TaskData)."""

    def __init__(self, classes: int, seed: int, n: int = 48) -> None:
        g = torch.Generator().manual_seed(seed)
        patterns = torch.randn(classes, 1, 8, 8, generator=g)
        labels = torch.arange(n) % classes
        inputs = torch.randn(n, 1, 8, 8, generator=g) * 0.5 + patterns[labels]
        a, b = n * 2 // 3, n * 5 // 6
        self.train = TensorDataset(inputs[:a], labels[:a])
        self.val = TensorDataset(inputs[a:b], labels[a:b])
        self.test = TensorDataset(inputs[b:], labels[b:])
        self.classes = [f"c{i}" for i in range(classes)]
        self.spec = {"data": f"synthetic-{seed}", "classes": None}
        self.augment = False


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    pack.add_task("first", Task(2, seed=0), 0.5, CONFIG)
    pack.save(out / "lenet-1task.pt")
    pack.add_task("second", Task(3, seed=1), 0.5, CONFIG,
                  checkpoint=out / "lenet-1task.pt.add-task.ckpt")
    pack.save(out / "lenet-2tasks.pt")
    write_archive(pack, out / "lenet-2tasks.safetensors")
    Pack.create("nets:tiny_transformer", (1, 8, 8),
                kwargs={"dim": 16, "heads": 2, "depth": 1, "patch": 4}).save(
        out / "transformer-init.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
