"""Write the format-2 fixtures of this folder: ``python tests/formats/make_v2.py OUT_DIR``.

Run once with packtool at commit cb09c2d (model file and archive format 2: a task whose prune
ratio the planner chose carries ``prune_reason`` and ``prune_search``), with ``tests/`` on
``PYTHONPATH``. Kept so that every later packtool proves it still reads them; do not
regenerate them with a newer packtool.

* ``lenet-auto-v2.pt``: a model file, lenet (width 4) on 1x8x8, one task added with
  ``prune="auto"`` and one with a fixed ratio.
* ``lenet-auto-v2.safetensors``: its archive.
"""

import sys
from pathlib import Path

from formats.make_v1 import CONFIG, Task

from packtool import Pack, add_task
from packtool.exporters import write_archive


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    pack, _ = add_task(pack, "first", Task(2, seed=0), "auto", CONFIG, auto_trials=2)
    pack, _ = add_task(pack, "second", Task(3, seed=1), 0.5, CONFIG)
    pack.save(out / "lenet-auto-v2.pt")
    write_archive(pack, out / "lenet-auto-v2.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
