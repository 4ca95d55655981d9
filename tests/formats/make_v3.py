"""Write the format-3 fixtures of this folder: ``python tests/formats/make_v3.py OUT_DIR``.

Run once with packtool at the commit that introduced format 3 (a task's ``temperature``, fitted
on validation when it is added, for task-free inference), with ``tests/`` on ``PYTHONPATH``.
Kept so that every later packtool proves it still reads them; do not regenerate them with a
newer packtool.

* ``lenet-calibrated-v3.pt``: a model file, lenet (width 4) on 1x8x8, two calibrated tasks
  (temperatures and feature statistics).
* ``lenet-calibrated-v3.safetensors``: its archive.
"""

import sys
from pathlib import Path

from formats.make_v1 import CONFIG, Task

from packtool import Pack, add_task
from packtool.exporters import write_archive


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    pack, _ = add_task(pack, "first", Task(2, seed=0), 0.5, CONFIG)
    pack, _ = add_task(pack, "second", Task(3, seed=1), 0.5, CONFIG)
    pack.save(out / "lenet-calibrated-v3.pt")
    write_archive(pack, out / "lenet-calibrated-v3.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
