"""Write the model-file format-4 fixture of this folder:
``python tests/formats/make_grown_v4.py OUT_DIR``.

Run once with packtool at the commit that introduced model-file format 4 (a task's ``widths``:
the network grew for it, ``add-task --grow``), with ``tests/`` on ``PYTHONPATH``. Kept so that
every later packtool proves it still reads it; do not regenerate it with a newer packtool.

* ``lenet-grown-v4.pt``: lenet (width 4) on 1x8x8, task ``first`` at the created widths, task
  ``second`` with every growable width half again as wide; ``lenet-grown-v4.outputs.pt``: both
  tasks' outputs on ``X`` of ``tests/test_formats.py`` when it was written.
"""

import sys
from pathlib import Path

import torch
from formats.make_v1 import CONFIG, Task

from packtool import Pack, add_task

X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    pack, _ = add_task(pack, "first", Task(2, seed=0), 0.5, CONFIG)
    pack, _ = add_task(pack, "second", Task(3, seed=1), 0.5, CONFIG, grow=0.5,
                        max_size=3.0)
    pack.save(out / "lenet-grown-v4.pt")
    with torch.no_grad():
        torch.save({name: pack.model_for(name)(X) for name in pack.task_names},
                   out / "lenet-grown-v4.outputs.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
