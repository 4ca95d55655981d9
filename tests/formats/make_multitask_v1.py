"""Write the multi-task ONNX fixture of this folder: ``python tests/formats/make_multitask_v1.py
OUT_DIR``.

Run once with packtool at the last commit whose multi-task files take one task per call
(``task`` int64 ``[1]``; commit 90a3ca2), with ``tests/`` on ``PYTHONPATH``. Kept so that every
later packtool proves it still serves such files; do not regenerate it with a newer packtool.

* ``lenet-multitask-v1.onnx``: the multi-task file of ``lenet-calibrated-v3.pt`` (two tasks,
  with feature distances).
"""

import sys
from pathlib import Path

from packtool import load
from packtool.exporters import export_multi_task


def main(out: Path) -> None:
    pack = load(Path(__file__).parent / "lenet-calibrated-v3.pt")
    export_multi_task(pack, out / "lenet-multitask-v1.onnx")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
