"""Kill a packtool run with SIGKILL at a counted point, and trace where those points are.

Used by the crash tests (tests/test_crash_matrix.py, tests/test_cli_resume.py, torchrun). A run
is a ``packtool`` command in a child process, forked from a server that imported packtool once
(:func:`forked`), or started with ``python crash.py KILL ARGS...``. Points are counted, never
timed:

* ``step:N``   - inside the N-th optimizer step (after the step, before the frozen weights are
  restored), whatever phase it falls in;
* ``prune:N``  - inside the N-th pruning, after the new owner index was computed (a pruning
  with a reserve computes two);
* ``write:N``  - half-way through writing the N-th checkpoint file;
* ``save:NAME`` - half-way through writing the file NAME (the model file, say).

A suffix ``@R`` kills only the process of torchrun rank ``R`` (``step:16@1``).

A traced run (``trace=PATH``) writes one line per event, ``<event> <steps so far>``: ``prune``,
``trial`` (an auto search's trial decided), ``finish`` (the chosen trial resumes its
fine-tuning), ``write`` (a checkpoint written); a test picks its kill points from them.

SIGKILL cannot be caught: no handler, ``finally`` or atexit runs, as when the OOM killer or a
power cut ends a run. Before dying, the run writes the PIDs of its child processes (its loader
workers) to ``<trace or kill file>.children``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from packtool import Pack, loop, phases
from packtool.cli.main import main
from packtool.formats import checkpoint, model_file

#: Where the child processes of a killed run are listed (set by :func:`install`).
_children_file: Path | None = None


def die() -> None:
    if _children_file is not None:
        _children_file.write_text(" ".join(str(p) for p in children(os.getpid())))
    os.kill(os.getpid(), signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (Linux ``/proc``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[-1][0] != "Z"


def install(kill: str | None = None, trace: Path | None = None) -> None:
    """Patch the library so that the run dies at ``kill`` and/or traces to ``trace``."""
    global _children_file
    kill, _, rank = (kill or "").partition("@")
    if rank and os.environ.get("RANK", "0") != rank:
        kill = ""
    where, _, arg = kill.partition(":")
    count = {"step": 0, "prune": 0, "write": 0}
    _children_file = Path(f"{trace or os.environ.get('CRASH_FILES', 'crash')}.children")

    def event(name: str) -> None:
        if trace is not None:
            with open(trace, "a") as f:
                f.write(f"{name} {count['step']}\n")

    def reached(name: str) -> bool:
        count[name] += 1
        return where == name and count[name] == int(arg)

    restore = loop.FrozenWeightGuard.restore

    def restore_or_die(self) -> None:
        if reached("step"):
            die()
        restore(self)

    loop.FrozenWeightGuard.restore = restore_or_die

    assign = phases.assign_owners

    def assign_or_die(*args, **kwargs):
        owners = assign(*args, **kwargs)
        if reached("prune"):
            die()
        event("prune")
        return owners

    phases.assign_owners = assign_or_die
    _wrap(phases, "_report_trial", lambda: event("trial"))
    _wrap(phases, "_finish_trial", lambda: event("finish"))

    write = checkpoint.atomic_write

    def write_or_die(path, writer) -> None:
        if reached("write"):
            return write(path, _half_then_die(writer))
        write(path, writer)
        event("write")

    checkpoint.atomic_write = write_or_die

    if where == "save":
        save = model_file.atomic_write

        def save_or_die(path, writer) -> None:
            if Path(path).name != arg:
                return save(path, writer)
            return save(path, _half_then_die(writer))

        model_file.atomic_write = save_or_die


def _half_then_die(write: Callable) -> Callable:
    def half_then_die(f) -> None:
        write(f)
        f.truncate(f.tell() // 2)
        f.flush()
        os.fsync(f.fileno())
        die()

    return half_then_die


def _wrap(module, name: str, before: Callable[[], None]) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        before()
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def assert_same_pack(a: Pack, b: Pack) -> None:
    """What a resumed run must reproduce: every tensor, every task's metrics and choices."""
    assert a.task_names == b.task_names
    for key in a.shared:
        assert torch.equal(a.shared[key], b.shared[key]), key
        assert torch.equal(a.owners[key], b.owners[key]), key
    for ta, tb in zip(a.tasks, b.tasks):
        assert ta.metrics == tb.metrics
        assert ta.temperature == tb.temperature
        assert (ta.prune, ta.prune_search) == (tb.prune, tb.prune_search)
        for part in ("head", "private"):
            da, db = getattr(ta, part), getattr(tb, part)
            assert da.keys() == db.keys()
            assert all(torch.equal(da[k], db[k]) for k in da), part


def run_cli(args: list[str]) -> int:
    """``packtool ARGS`` in this process; returns the exit code."""
    try:
        main(args=args, prog_name="packtool")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _child(args: list[str], kill: str | None, trace: Path | None, out: Path,
           cwd: Path | None) -> None:
    # A process started by the fork server inherits its start method: back to a plain
    # process's (loader workers are forked, as in a `packtool` run).
    multiprocessing.set_start_method("fork", force=True)
    if cwd is not None:
        os.chdir(cwd)
    os.environ["CRASH_FILES"] = str(out)
    err = Path(f"{out}.err") if out != Path(os.devnull) else out
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = os.fdopen(1, "w", closefd=False)
    sys.stderr = os.fdopen(2, "w", closefd=False)
    install(kill, trace)
    code = run_cli(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


#: Children fork from a server process that imported packtool but never ran a torch operation:
#: forking the test process itself, once it has used OpenMP threads, can deadlock the child.
_SERVER = multiprocessing.get_context("forkserver")
# (Python 3.11 ignores sys.path there: only installed modules can be preloaded.)
_SERVER.set_forkserver_preload(["packtool.cli.commands.init", "packtool.cli.commands.add_task",
                                "packtool.cli.commands.run"])


def forked(args: list[str], *, kill: str | None = None, trace: Path | None = None,
           out: Path | None = None, cwd: Path | None = None) -> int:
    """Run ``packtool ARGS`` in a fresh forked process (stdout to ``out``, stderr to
    ``<out>.err``); returns its exit code, or ``-signal`` if a signal ended it."""
    process = _SERVER.Process(target=_child, args=(args, kill, trace,
                                                   out or Path(os.devnull), cwd))
    process.start()
    process.join()
    assert process.exitcode is not None
    return process.exitcode


if __name__ == "__main__":  # python crash.py KILL ARGS... (KILL "-": no kill)
    install(None if sys.argv[1] == "-" else sys.argv[1])
    sys.exit(run_cli(sys.argv[2:]))
