"""Distributed add-task: 2 gloo processes under torchrun on CPU (issue 8)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from packtool import Pack, TrainConfig, add_task, load_task_data
from packtool.fileio import file_lock
from packtool.formats.checkpoint import Checkpoint, checkpoint_path

#: Real processes, wheels or long runs: the full suite runs them, the quick loop skips them.
pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
CONFIG = TrainConfig(epochs=3, finetune_epochs=1, lr=0.05, batch_size=16, device="cpu")


def _torchrun(model: Path, data: str, classes: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(HERE / "ddp_worker.py"), str(model), data, classes, str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture
def first_pack(tmp_path) -> tuple[Path, torch.Tensor]:
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    first = load_task_data("digits", pack.preprocess, classes=[0, 1])
    pack, _ = add_task(pack, "first", first, 0.5, CONFIG)
    path = tmp_path / "model.pt"
    pack.save(path)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return path, pack.model_for("first")(x)


def test_two_gloo_ranks_train_identically(first_pack, tmp_path):
    model, first_outputs = first_pack
    out = tmp_path / "reports"
    out.mkdir()
    run = _torchrun(model, "digits", "2,3,4", out)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["world"] == 2
    assert reports[0]["digest"] == reports[1]["digest"]  # same owners and weights on every rank
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    assert all(r["first_unchanged"] for r in reports)  # the earlier task, on every rank
    saved = Pack.load(model)
    assert saved.task_names == ["first", "second"]
    with torch.no_grad():
        x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        assert torch.equal(saved.model_for("first")(x), first_outputs)
    # in line with a single process on the same data and budget
    single = Pack.load(model)
    single.tasks.pop()
    single.owners = {k: torch.where(o == 2, torch.zeros_like(o), o)
                     for k, o in single.owners.items()}
    data = load_task_data("digits", single.preprocess, classes=[2, 3, 4])
    alone = add_task(single, "second-alone", data, 0.5, CONFIG)[1].accuracy
    assert abs(reports[0]["accuracy"] - alone) <= 0.1, (reports[0]["accuracy"], alone)


def _image_folder(root: Path, corrupt: bool) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 24), ("test", 6)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_a_failing_rank_stops_every_rank_and_leaves_model(first_pack, tmp_path):
    model, _ = first_pack
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    folder = _image_folder(tmp_path / "images", corrupt=True)
    out = tmp_path / "reports"
    out.mkdir()
    run = _torchrun(model, str(folder), "", out)
    assert run.returncode != 0
    assert "5.png" in run.stderr  # the rank that read it names the bad file
    assert "Traceback" not in "\n".join(
        line for line in run.stderr.splitlines() if line.startswith("rank"))
    assert not list(out.iterdir())
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


# -- the command line under torchrun: `torchrun --nproc-per-node N -m packtool add-task ...` --


def _torchrun_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "packtool", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


CLI_ADD = ("add-task", "model.pt", "--prune", "0.5", "--epochs", "2", "--finetune-epochs", "1",
           "--lr", "0.05", "--batch-size", "16", "--device", "cpu")


def test_cli_add_task_under_torchrun(first_pack, tmp_path):
    model, first_outputs = first_pack
    run = _torchrun_cli(*CLI_ADD, "--data", "digits", "--classes", "2,3", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)  # one document: only rank 0 reports
    assert doc["task"] == "digits-2-3" and doc["index"] == 2 and 0.5 <= doc["accuracy"] <= 1
    saved = Pack.load(model)
    assert saved.task_names == ["first", "digits-2-3"]
    assert saved.tasks[-1].metrics["accuracy"] == doc["accuracy"]
    with torch.no_grad():
        x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        assert torch.equal(saved.model_for("first")(x), first_outputs)
    assert not (tmp_path / "model.pt.add-task.ckpt").exists()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error: ")]


def test_cli_bad_file_on_every_rank_under_torchrun(first_pack, tmp_path):
    model, _ = first_pack
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    folder = _image_folder(tmp_path / "images", corrupt=True)
    run = _torchrun_cli(*CLI_ADD, "--data", str(folder), cwd=tmp_path)
    assert run.returncode != 0
    errors = _error_lines(run.stderr)
    assert len(errors) == 2 and any("5.png" in e for e in errors), run.stderr[-3000:]
    # Our processes print one line each; torchrun's own failure report (a traceback of the
    # launcher) follows them and is not ours to shorten.
    assert "Traceback" not in run.stderr.split("torch/distributed/elastic")[0]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


def test_cli_lock_held_stops_every_rank_under_torchrun(first_pack, tmp_path):
    """Rank 0 cannot take the lock: every rank stops at once instead of waiting for it."""
    model, _ = first_pack
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    with file_lock(model):
        run = _torchrun_cli(*CLI_ADD, "--data", "digits", "--classes", "2,3", cwd=tmp_path)
    assert run.returncode != 0
    errors = _error_lines(run.stderr)
    assert len(errors) == 2, run.stderr[-3000:]
    assert any("in use by another packtool process" in e for e in errors)
    assert any("another process of this torchrun job failed" in e for e in errors)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


def _torchrun_killed(kill: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``packtool ARGS`` under torchrun, one rank SIGKILLed at ``kill`` (tests/crash.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["CRASH_FILES"] = str(cwd / "killed")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(HERE / "crash.py"), kill, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_one_rank_killed_then_resume_under_torchrun(first_pack, tmp_path):
    """Rank 1 SIGKILLed mid-epoch: the job stops, MODEL is unchanged, and `--resume` under
    torchrun ends bit-identical to an uninterrupted torchrun run."""
    model, _ = first_pack
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(model, reference / "model.pt")
    args = (*CLI_ADD, "--data", "digits", "--classes", "2,3", "--epochs", "3", "--json")
    ref = _torchrun_cli(*args, cwd=reference)
    assert ref.returncode == 0, ref.stderr[-3000:]

    before = hashlib.sha256(model.read_bytes()).hexdigest()
    steps = 11  # digits {2,3}: 11 batches of 16 per rank and epoch
    killed = _torchrun_killed(f"step:{steps + 5}@1", *args, cwd=tmp_path)  # in epoch 2
    assert killed.returncode != 0
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    saved = Checkpoint.load(checkpoint_path(model))
    assert (saved.phase, saved.epoch) == ("train", 1)

    resumed = _torchrun_cli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    documents = [json.loads(r.stdout) for r in (ref, resumed)]
    for doc in documents:
        doc.pop("seconds")
    assert documents[0] == documents[1]
    a, b = Pack.load(reference / "model.pt"), Pack.load(model)
    assert a.tasks[-1].metrics == b.tasks[-1].metrics
    for key in a.shared:
        assert torch.equal(a.shared[key], b.shared[key]) and torch.equal(a.owners[key],
                                                                          b.owners[key])
    assert all(torch.equal(v, b.tasks[-1].head[k]) for k, v in a.tasks[-1].head.items())
