"""Write the mid-search checkpoint fixture: ``python tests/formats/make_search_v1.py OUT_DIR``.

Run once at commit 0af8a2d (before fine-tuning trials stopped at the target), with ``tests/``
on ``PYTHONPATH``. There, a checkpoint written inside a ``--prune auto`` search keeps the
largest passing trial as a finished state dict (``search["best"]``); later packtools keep a
paused trial instead and must still resume this one. Do not regenerate it with a newer packtool.

* ``mlp16.pt``: ``mlp`` (two hidden layers of 16) on 1x8x8, no task yet.
* ``mlp16.pt.search.ckpt``: its add-task of the ten digits, prune ``auto`` (:data:`SEARCH`),
  interrupted one epoch into the second fine-tuning trial, the first having passed.
* ``mlp16-searched.pt``: what the uninterrupted add-task wrote.
"""

import shutil
import sys
from pathlib import Path

from conftest import StopAfter

from packtool import Pack, TrainConfig, add_task, load_task_data

CONFIG = TrainConfig(epochs=4, finetune_epochs=2, lr=0.05, device="cpu")
SEARCH = {"tolerance": 3.0, "auto_trials": 3}


def digits(pack: Pack):
    return load_task_data("digits", pack.preprocess)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    base.save(out / "mlp16.pt")
    base = Pack.load(out / "mlp16.pt")
    done, _ = add_task(base, "digits", digits(base), "auto", CONFIG, **SEARCH)
    done.save(out / "mlp16-searched.pt")
    ckpt = out / "run.ckpt"
    try:  # 4 training epochs, a trial of 2, then 1 epoch into the second trial
        add_task(base, "digits", digits(base), "auto", CONFIG, **SEARCH, checkpoint=ckpt,
                 progress=StopAfter(7))
    except KeyboardInterrupt:
        shutil.move(ckpt, out / "mlp16.pt.search.ckpt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
