"""Property-based: random command lines never crash and never damage MODEL (issue 7).

Arguments are drawn from the CLI's own vocabulary (commands, options, good and bad values), so
most draws reach the commands' logic instead of stopping at click's parser. Every outcome must
be a clean one: exit 0, 1 (exactly one ``Error:`` line) or 2 (click usage), no traceback, no
uncaught exception, and MODEL byte-identical whenever the command failed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from cli_helpers import invoke, ok, sha256
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

# Training is kept to one short epoch so that a successful add-task costs little.
QUICK_TRAINING = ["--epochs", "1", "--finetune-epochs", "0", "--batch-size", "64"]
FILES = ["model.pt", "pack.safetensors", "task.onnx", "digits.png", "missing.pt", "sub/new.pt"]
TASKS = ["digits-0-1", "unknown", ""]
CLASSES = ["0,1", "2-3", "0-9", "9-2", "0,0", "x", "99"]
FLAG = None  # an option that takes no value
OPTIONS: dict[str, dict[str, list[str] | None]] = {
    "init": {"--arch": ["mlp", "lenet", "no_such_arch", "os:system", "resnet18"],
             "--input-size": ["1x8x8", "3x8x8", "0x8x8", "1x8"],
             "--kwarg": ["hidden=16", "=", "hidden=-1", "width=0", "nope=1"],
             "--weights": ["missing.pth", "model.pt", "task.onnx", "DEFAULT"],
             "--policy": ["frozen", "per_task"], "--force": FLAG},
    "add-task": {"--data": ["digits", "cubs", "nowhere/", "digits.png"],
                 "--prune": ["0", "0.5", "0.99", "1", "-0.1", "nan"], "--classes": CLASSES,
                 "--task": TASKS, "--lr": ["0.01", "1e30", "-1"],
                 "--optimizer": ["adam", "adamw", "rmsprop"], "--device": ["cpu", "cuda", "tpu"],
                 "--val-fraction": ["0.5", "0.99", "0"], "--data-root": ["nowhere", "."],
                 "--batch-size": ["1", "0"], "--resume": FLAG, "--restart": FLAG,
                 "--global-prune": FLAG, "--json": FLAG},
    "eval": {"--task": TASKS, "--all": FLAG, "--data": ["digits", "cubs", "nowhere/"],
             "--classes": CLASSES, "--device": ["cpu", "cuda"], "--plot": ["p.png", "p.xyz"],
             "--batch-size": ["1", "0"], "--json": FLAG},
    "info": {"--plot": ["p.png", "p.xyz", "model.pt"], "--json": FLAG},
    "export": {"--task": TASKS, "--all": FLAG, "--archive": ["a.safetensors", *FILES],
               "--out": ["o.onnx", "outdir", *FILES], "--opset": ["7", "18", "99"],
               "--dense": FLAG, "--no-verify": FLAG, "--half": FLAG, "--data-root": ["."],
               "--json": FLAG},
    "predict": {"--task": TASKS, "--top": ["0", "1", "3"], "--json": FLAG},
}


@st.composite
def command_lines(draw) -> list[str]:
    """``COMMAND [MODEL] [OPTION [VALUE]]...``; predict takes a source file and images."""
    command = draw(st.sampled_from(list(OPTIONS)))
    args = [command, *(QUICK_TRAINING if command == "add-task" else [])]
    if command == "predict":
        args.append(draw(st.sampled_from(FILES)))
        args += draw(st.lists(st.sampled_from(["digits.png", "model.pt", "missing.png"]),
                              max_size=2))
    else:
        args += draw(st.lists(st.sampled_from(FILES), max_size=1))
    required = {"init": ["--arch"], "add-task": ["--data", "--prune"],
                "export": [draw(st.sampled_from(["--task", "--all", "--archive"]))]}
    chosen = draw(st.lists(st.sampled_from(sorted(OPTIONS[command])), max_size=3))
    for option in [*required.get(command, []), *chosen]:
        values = OPTIONS[command][option]
        args += [option] if values is FLAG else [option, draw(st.sampled_from(values))]
    return args


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with model.pt (one digits task), its ONNX export and archive, and an image."""
    folder = tmp_path_factory.mktemp("fuzz-cli")
    model = folder / "model.pt"
    ok("init", model, "--arch", "mlp", "--input-size", "1x8x8", "--kwarg", "hidden=16")
    ok("add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0.5",
       *QUICK_TRAINING, "--device", "cpu")
    ok("export", model, "--task", "digits-0-1", "--out", folder / "task.onnx")
    ok("export", model, "--archive", folder / "pack.safetensors")
    from PIL import Image

    Image.new("L", (8, 8), 128).save(folder / "digits.png")
    return folder


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command_lines())
@pytest.mark.slow
def test_random_command_lines(workdir, monkeypatch, args):
    # A fresh copy per example: what one command wrote must not change the next one's outcome.
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(workdir, Path(scratch) / "w"))
        monkeypatch.chdir(folder)
        _check_one_command(folder, args)


def _check_one_command(folder: Path, args: list[str]) -> None:
    model = folder / "model.pt"
    before = sha256(model)
    result = invoke(*args)
    event(f"{args[0]}: exit {result.exit_code}")
    shown = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, result.exception)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, shown)
    assert "Traceback" not in shown, args
    if result.exit_code == 1:  # one error line, last (progress of the steps that ran first)
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("Error: ")]
        assert errors == [lines[-1]], (args, result.stderr)
    if result.exit_code != 0:
        assert sha256(model) == before, args
    assert not [p.name for p in folder.rglob("*.tmp")], args
