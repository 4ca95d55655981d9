"""Write the archive format-4 fixture of this folder: ``python tests/formats/make_v4.py OUT_DIR``.

Run once with packtool at the commit that introduced archive format 4 (the owner index
ANS-coded, see ``packtool/formats/owner_code.py``), with ``tests/`` on ``PYTHONPATH``. Kept so
that every later packtool proves it still reads it; do not regenerate it with a newer packtool.

* ``lenet-calibrated-v4.safetensors``: the archive of ``lenet-calibrated-v3.pt`` (two tasks).
"""

import sys
from pathlib import Path

from packtool import Pack
from packtool.exporters import write_archive


def main(out: Path) -> None:
    pack = Pack.load(Path(__file__).parent / "lenet-calibrated-v3.pt")
    write_archive(pack, out / "lenet-calibrated-v4.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
