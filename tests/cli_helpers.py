"""Helpers for the command-line tests (tests/test_cli_*.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from packtool.cli.main import main

#: Tiny training settings: an mlp on 8x8 digits trains in about a second.
FAST = ("--epochs", "2", "--finetune-epochs", "1", "--lr", "0.01", "--device", "cpu")
ARCH = ("--arch", "mlp", "--input-size", "1x8x8", "--kwarg", "hidden=32")


def invoke(*args: Any, env: dict[str, str] | None = None) -> Result:
    """Run ``packtool ARGS`` in-process (stdout and stderr captured separately)."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def ok(*args: Any) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def ok_json(*args: Any) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_error(result: Result, code: int = 1, match: str = "") -> str:
    """A clean failure: exit ``code``, an ``Error:`` line on stderr, no traceback anywhere.

    Exit 1 ends stderr with that line (progress lines of the steps that ran may come before
    it); click usage errors (exit 2) print usage lines too. Returns the error line.
    """
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    if code == 1:
        assert lines[-1] == errors[0], result.stderr
    assert match.lower() in errors[0].lower(), errors[0]
    return errors[0]


def init_model(path: Path, *extra: Any) -> Path:
    ok("init", path, *ARCH, *extra)
    return path
