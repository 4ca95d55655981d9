"""Run ``packtool ARGS`` and SIGKILL this process at a chosen point (tests/test_cli_resume.py).

    python kill_worker.py step N ARGS...    # killed inside the N-th optimizer step (mid-epoch)
    python kill_worker.py save NAME ARGS... # killed half-way through writing the file NAME

SIGKILL cannot be caught: no handler, ``finally`` or atexit runs, as when the OOM killer or a
power cut ends a run.
"""

import os
import signal
import sys
from pathlib import Path

from packtool import loop
from packtool.cli.main import main
from packtool.formats import model_file


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(count: int) -> None:
    original = loop.FrozenWeightGuard.restore
    calls = 0

    def restore(self) -> None:
        nonlocal calls
        calls += 1
        if calls == count:
            die()
        original(self)

    loop.FrozenWeightGuard.restore = restore


def kill_while_saving(name: str) -> None:
    original = model_file.atomic_write

    def atomic_write(path, write) -> None:
        if Path(path).name != name:
            return original(path, write)

        def half_then_die(f) -> None:
            write(f)
            f.truncate(f.tell() // 2)
            f.flush()
            os.fsync(f.fileno())
            die()

        return original(path, half_then_die)

    model_file.atomic_write = atomic_write


if __name__ == "__main__":
    where, arg, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if where == "step":
        kill_at_step(int(arg))
    else:
        kill_while_saving(arg)
    main(args=args, prog_name="packtool")
