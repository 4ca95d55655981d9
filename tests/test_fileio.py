"""The lock guarding a model file (issue 24): it never outlives the process that took it."""

from __future__ import annotations

import os
import signal
import time

import pytest
from crash import alive

from packtool.errors import LockError
from packtool.fileio import file_lock


def test_second_holder_fails_at_once(tmp_path):
    model = tmp_path / "model.pt"
    with file_lock(model), pytest.raises(LockError, match="in use by another packtool"), \
            file_lock(model):
        pass
    with file_lock(model):  # released at the end of the block
        pass


def _wait_for(path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def test_a_killed_holders_children_do_not_keep_its_lock(tmp_path):
    """A holder forks a child (as DataLoader workers are forked), then is SIGKILLed: the lock
    is free at once although the child lives on."""
    model, ready = tmp_path / "model.pt", tmp_path / "ready"
    holder = os.fork()
    if holder == 0:
        try:
            with file_lock(model):
                child = os.fork()
                if child == 0:
                    time.sleep(60)  # a loader worker that has not noticed its parent died
                    os._exit(0)
                ready.write_text(str(child))
                time.sleep(60)
        finally:
            os._exit(1)
    child = int(_wait_for(ready))
    try:
        with pytest.raises(LockError), file_lock(model):  # held while the holder lives
            pass
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        assert alive(child)
        with file_lock(model):  # free at once, the child still alive
            assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_forked_children_leave_the_parents_lock_held(tmp_path):
    """Closing the inherited descriptor in a child must not release the parent's lock."""
    model = tmp_path / "model.pt"
    with file_lock(model):
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        with pytest.raises(LockError), file_lock(model):
            pass
