"""Safe file I/O: one atomic-write helper, one quiet weights-only loader, and an advisory lock.

Every file packtool writes goes through :func:`atomic_write`: the bytes land in a temporary file
in the target's directory, are fsynced, and replace the target with ``os.replace`` (atomic on
POSIX and Windows), then the directory is fsynced. A crash at any point leaves either the old
file or the new one, never a mix. Ctrl-C during a write is held until the write is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import LockError, PackToolError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file and move it over ``path`` atomically.

    The temporary file is removed if ``write`` raises (or the process is interrupted with
    ``KeyboardInterrupt``); ``path`` keeps its old bytes. The new file gets the old file's
    permissions when it replaces one, else the usual 0o666 minus the umask.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise PackToolError(f"directory {directory} does not exist")
    fd, tmp = _temporary(target, directory)
    try:
        with _ctrl_c_held():
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(target))
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, naming ``path``, a file that cannot be written there: checked before long work,
    so that a read-only target fails at once. A folder that does not exist yet is checked at
    its nearest existing parent (it would be created)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise PackToolError(f"cannot write {target}: {directory} is not a directory")
    fd, probe = _temporary(target, directory)
    os.close(fd)
    probe.unlink()


def _temporary(target: Path, directory: Path) -> tuple[int, Path]:
    """A new temporary file beside ``target`` (an error names ``target``, not the file).

    A folder at ``target`` is refused here, before any work: ``os.replace`` would fail on it
    only after the file was written, naming the temporary file."""
    if target.is_dir():
        raise PackToolError(f"cannot write {target}: it is a folder; give a file name")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise PackToolError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return fd, Path(name)


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise ``KeyboardInterrupt``.

    ``torch.save`` turns a ``KeyboardInterrupt`` raised inside its writer into a
    ``RuntimeError`` ("unexpected pos"), which would read as a failed write; held, the write
    completes and the interruption follows it. Only the main thread receives signals, and only
    Python's own handler is replaced.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, without torch's warnings.

    torch warns about the pickle protocol of a stream it is asked to read; for a hostile or
    foreign file that warning would print before the caller's one-line error. Exceptions pass
    through unchanged: callers turn them into their own messages.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (what exports record as their source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that guards ``path``: ``<path>.lock`` beside it."""
    target = Path(path)
    return target.with_name(target.name + ".lock")


#: Descriptors of the locks this process holds (see :func:`file_lock`).
_HELD_LOCKS: set[int] = set()


def _close_held_locks() -> None:
    """In a forked child: close the inherited lock descriptors (not unlock: that would release
    the parent's lock too). An ``flock`` lives as long as any descriptor of it is open, so a
    DataLoader worker that kept one would hold a killed run's lock until it noticed its parent
    was gone."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # POSIX; spawned children never inherit (PEP 446)
    os.register_at_fork(after_in_child=_close_held_locks)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``path`` for the ``with`` block.

    Uses ``flock`` on ``<path>.lock``: the kernel drops it when the holder exits or is killed,
    so a stale lock file from a dead process never blocks. Processes the holder forks (loader
    workers) close their copy of the descriptor at once, so the lock never outlives the process
    that took it. A second writer fails at once with :class:`LockError` instead of waiting.
    """
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PackToolError(f"cannot create lock file {lock}: {exc.strerror}") from exc
    _HELD_LOCKS.add(fd)
    try:
        if not _try_lock(fd):
            raise LockError(
                f"{path} is in use by another packtool process (lock {lock}); "
                "wait for it to finish"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    if os.name == "posix":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover
