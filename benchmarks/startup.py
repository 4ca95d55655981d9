"""Start-up: what a command costs from process start, imports included (issue 25).

Every figure is a whole process, started as a user starts it (the ``packtool`` console script,
or ``python``), timed from before it starts to after it exits, with its peak resident memory
(its ``ru_maxrss``, see :data:`LAUNCHER`); the median of several processes.

* ``packtool --help`` and ``--version``: targets at most 0.3 s and 80 MB;
* ``packtool predict FILE.onnx`` on 8 JPEGs (a ResNet-18 task at 112 px): at most 1.0 s and
  300 MB;
* ``packtool info MODEL`` against ``python -c "import torch"``: at most 1.3x;
* ``packtool add-task``'s fixed cost on a digits task (its wall time minus the ``seconds`` it
  reports) against ``python -c "import torch, torchvision"``: at most 1.3x;
* five split-digits tasks (one epoch of each phase) through ``packtool run`` against five
  ``add-task`` calls: the fixed cost (wall time minus the tasks' own ``seconds``), paid once by
  ``run``, against ``python -c "import torch, torchvision"``: at most 1.3x;
* a one-epoch task on 144 JPEGs of about 500x375 at 112 px (``add-task --epochs 1
  --finetune-epochs 0 --prune 0`` with the default settings), against a plain torchvision
  script doing the same epoch and a test pass (:mod:`benchmarks.plain_loop`), both from process
  start: at least 0.8x the plain script's speed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from packtool import TrainConfig, add_task_to_file, create_file, load
from packtool.exporters import export_onnx

from .common import count_word, fmt, markdown_table

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StartupSettings:
    repeats: int  # processes per figure (the median is reported)
    arch: str  # the network of the predict and one-epoch figures
    size: int  # its input side
    images: int  # training JPEGs of the one-epoch figure (a third as many test images)
    note: str = ""
    tasks: int = 5  # split-digits tasks of the sequence figure
    #: Also the figures whose processes load torch (False: ``--help``, ``--version`` and
    #: ``predict`` only, the ONNX file made in this process: the smoke run, a few seconds).
    torch_figures: bool = True


#: The figures only :attr:`StartupSettings.torch_figures` measures.
TORCH_FIGURES = ("import_torch", "import_torch_torchvision", "one_epoch", "plain_epoch", "info",
                 "add_task_fixed", "sequence")

SETTINGS = {
    "smoke": StartupSettings(1, "lenet", 32, 16, note="smoke: not a measurement; the figures "
                             "that load torch are not run", tasks=2, torch_figures=False),
    "quick": StartupSettings(3, "resnet18", 112, 144),
    "full": StartupSettings(5, "resnet18", 112, 144),
}

#: Targets: seconds and MB for the commands that must start at once, ratios for the others.
TARGETS = {"help_s": 0.3, "help_mb": 80.0, "predict_s": 1.0, "predict_mb": 300.0,
           "info_ratio": 1.3, "fixed_ratio": 1.3, "run_ratio": 1.3, "epoch_speed": 0.8}
#: What a fixed cost is set against: the imports every training command needs.
IMPORTS = [sys.executable, "-c", "import torch, torchvision"]
#: The split-digits sequence of the ``run`` figure: one epoch of each phase per task
#: (:func:`plan` lists its tasks).
NETWORK = """[network]
arch = "lenet"
input_size = "1x8x8"
[defaults]
prune = 0.5
epochs = 1
finetune_epochs = 1
lr = 0.05
finetune_lr = 0.005
"""


def plan(tasks: int) -> str:
    """The ``run`` figure's plan: the first ``tasks`` split-digits tasks."""
    return NETWORK + "".join(
        f'[[tasks]]\nname = "digits-{a}-{a + 1}"\ndata = "digits"\nclasses = [{a}, {a + 1}]\n'
        for a in range(0, 2 * tasks, 2))


#: Starts the measured command and reports its wall time, peak memory and exit status. A child's
#: ``ru_maxrss`` counts the memory of the process it was forked from, so the command is forked
#: from this small interpreter (``python -S``, about 10 MB), not from the benchmark's.
LAUNCHER = """import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([time.perf_counter() - start, usage.ru_maxrss / 1024,
               os.waitstatus_to_exitcode(status)], f)
"""


def timed(args: list[str], cwd: Path, code: int = 0) -> tuple[float, float, str]:
    """Run ``args``; its wall time (s), peak resident memory (MB) and stdout. Fails loudly
    unless it exits with ``code``."""
    with tempfile.TemporaryDirectory() as name:
        report = Path(name) / "report.json"
        done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(report), *args],
                              cwd=cwd, capture_output=True, text=True)
        seconds, mb, exited = json.loads(report.read_text())
    if exited != code or done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
    return seconds, mb, done.stdout


def median_of(repeats: int, args: list[str], cwd: Path,
              before: Any = None, code: int = 0) -> dict[str, float]:
    """Median wall time and peak memory of ``repeats`` processes, each exiting with ``code``
    (``before()`` runs first each time, untimed)."""
    runs = []
    for _ in range(repeats):
        if before is not None:
            before()
        runs.append(timed(args, cwd, code)[:2])
    return _medians(runs)


def in_turns(repeats: int, first: list[str], second: list[str], cwd: Path,
             before: Any = None) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`median_of` for the two sides of a ratio, run in turns (``before()``, first,
    second), so that a slow spell of the machine hits both sides: a record taken side after
    side once put the one-epoch ratio at 0.70x, where runs in turns give 0.85-0.94x."""
    runs: tuple[list[tuple[float, float]], ...] = ([], [])
    for _ in range(repeats):
        if before is not None:
            before()
        for side, args in zip(runs, (first, second), strict=True):
            side.append(timed(args, cwd)[:2])
    return _medians(runs[0]), _medians(runs[1])


def _medians(runs: list[tuple[float, float]]) -> dict[str, float]:
    return {"seconds": statistics.median(r[0] for r in runs),
            "mb": statistics.median(r[1] for r in runs)}


def _jpegs(root: Path, train: int, classes: int = 4) -> list[Path]:
    """Smooth random photographs of about 500x375 in ``root/{train,test}/<class>/``."""
    rng = np.random.default_rng(0)
    paths = []
    for split, count in (("train", train), ("test", max(train // 3, classes))):
        for i in range(count):
            label = i % classes
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            low[..., label % 3] = 255
            width, height = 500 + int(rng.integers(-20, 21)), 375
            path = folder / f"{i}.jpg"
            Image.fromarray(low).resize((width, height), Image.BILINEAR).save(path, quality=90)
            paths.append(path)
    return paths


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    n = settings.repeats
    packtool = str(Path(sys.executable).parent / "packtool")
    result: dict[str, Any] = {"settings": asdict(settings)}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        result["help"] = median_of(n, [packtool, "--help"], tmp)
        result["version"] = median_of(n, [packtool, "--version"], tmp)
        # A typo in a plan is refused before the training stack loads (exit 2: a bad argument).
        (tmp / "typo.toml").write_text(plan(1).replace("lr = 0.05", "lr = -0.05"))
        result["plan_error"] = median_of(n, [packtool, "run", "typo.toml"], tmp, code=2)
        # One task on a JPEG folder, as a user would run it: its epoch, then serving it.
        images = _jpegs(tmp / "jpegs", settings.images)
        model, onnx = tmp / "model.pt", tmp / "photos.onnx"
        if settings.torch_figures:
            result.update(_torch_figures(settings, packtool, tmp, model))
            timed([packtool, "export", str(model), "--task", "photos", "--out", str(onnx)], tmp)
        else:
            _one_task_here(settings, tmp, model, onnx)
        result["predict"] = median_of(
            n, [packtool, "predict", str(onnx), *map(str, images[:8])], tmp)
        if log:
            log("startup: --help, --version and predict done")
        if settings.torch_figures:
            result.update(_digits_figures(settings, packtool, tmp))
            if log:
                log("startup: add-task's fixed cost and the sequence done")
    return result


def _one_task_here(settings: StartupSettings, tmp: Path, model: Path, onnx: Path) -> None:
    """The smoke run's ONNX file to predict with, made in this process (no torch start-up):
    the one-epoch task :func:`_torch_figures` adds through the command line."""
    create_file(model, settings.arch, input_size=(3, settings.size, settings.size))
    add_task_to_file(model, str(tmp / "jpegs"), 0.0, TrainConfig(epochs=1, finetune_epochs=0,
                                                                  lr=0.01), name="photos")
    export_onnx(load(model), "photos", onnx)


def _torch_figures(settings: StartupSettings, packtool: str, tmp: Path, model: Path
                   ) -> dict[str, Any]:
    """The imports, the one-epoch task against the plain script, and ``info``; leaves the
    task in ``model``."""
    n, python, side = settings.repeats, sys.executable, settings.size
    found = {"import_torch": median_of(n, [python, "-c", "import torch"], tmp),
             "import_torch_torchvision": median_of(n, IMPORTS, tmp)}
    timed([packtool, "init", str(model), "--arch", settings.arch, "--input-size",
           f"3x{side}x{side}"], tmp)
    fresh = tmp / "fresh.pt"
    shutil.copy(model, fresh)
    add = [packtool, "add-task", str(model), "--data", str(tmp / "jpegs"), "--task", "photos",
           "--prune", "0", "--epochs", "1", "--finetune-epochs", "0", "--lr", "0.01"]
    plain = [python, str(HERE / "plain_loop.py"), str(tmp / "jpegs"), str(side), "2"]
    found["one_epoch"], found["plain_epoch"] = in_turns(
        n, add, plain, tmp, before=lambda: shutil.copy(fresh, model))
    info, imports = in_turns(n, [packtool, "info", str(model)], [python, "-c", "import torch"],
                             tmp)
    found["info"] = {**info, "import_s": imports["seconds"]}
    return found


def _digits_figures(settings: StartupSettings, packtool: str, tmp: Path) -> dict[str, Any]:
    """add-task's fixed cost on a small digits task (wall time minus its own ``seconds``) and
    the sequence through ``run`` and through ``add-task`` calls."""
    digits = tmp / "digits.pt"
    timed([packtool, "init", str(digits), "--arch", "lenet", "--input-size", "1x8x8"], tmp)
    blank = tmp / "digits-blank.pt"
    shutil.copy(digits, blank)
    fixed, imports = [], []
    for _ in range(settings.repeats):
        shutil.copy(blank, digits)
        wall, mb, out = timed([packtool, "add-task", str(digits), "--data", "digits",
                               "--classes", "0,1", "--prune", "0.5", "--epochs", "1",
                               "--finetune-epochs", "0", "--json"], tmp)
        fixed.append((wall - json.loads(out)["seconds"], wall, mb))
        imports.append(timed(IMPORTS, tmp)[0])  # the ratio's other side, in turns
    return {"add_task_fixed": {"seconds": statistics.median(f[0] for f in fixed),
                               "wall": statistics.median(f[1] for f in fixed),
                               "mb": statistics.median(f[2] for f in fixed),
                               "import_s": statistics.median(imports)},
            "sequence": _sequence(settings.repeats, settings.tasks, packtool, tmp)}


def _sequence(repeats: int, tasks: int, packtool: str, tmp: Path) -> dict[str, float]:
    """``tasks`` tasks through ``packtool run`` and through as many ``add-task`` calls: wall
    times and the tasks' own ``seconds`` (medians over ``repeats``)."""
    plan_file = tmp / "sequence.toml"
    plan_file.write_text(plan(tasks))
    runs, calls, imports = [], [], []
    for _ in range(repeats):
        model = tmp / "sequence.pt"
        for leftover in (model, tmp / "results.json", tmp / "results.csv"):
            leftover.unlink(missing_ok=True)
        wall, _, out = timed([packtool, "run", str(plan_file), "--model", str(model), "--json"],
                             tmp)
        runs.append((wall, sum(t["seconds"] for t in json.loads(out)["tasks"])))
        imports.append(timed(IMPORTS, tmp)[0])  # the ratio's other side, in turns
        model.unlink()
        wall = timed([packtool, "init", str(model), "--arch", "lenet", "--input-size", "1x8x8",
                      "--tasks", str(tasks)], tmp)[0]
        seconds = 0.0
        for a in range(0, 2 * tasks, 2):
            took, _, out = timed([packtool, "add-task", str(model), "--data", "digits",
                                  "--classes", f"{a},{a + 1}", "--task", f"digits-{a}-{a + 1}",
                                  "--prune", "0.5", "--epochs", "1", "--finetune-epochs", "1",
                                  "--lr", "0.05", "--finetune-lr", "0.005", "--json"], tmp)
            wall += took
            seconds += json.loads(out)["seconds"]
        calls.append((wall, seconds))
    return {"run_wall": statistics.median(r[0] for r in runs),
            "run_fixed": statistics.median(r[0] - r[1] for r in runs),
            "calls_wall": statistics.median(c[0] for c in calls),
            "calls_fixed": statistics.median(c[0] - c[1] for c in calls),
            "import_s": statistics.median(imports)}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """The figures the targets speak of. The imports a fixed cost is set against were timed in
    turns with it (``import_s``), where the record has them: timed apart, a slow spell of the
    machine moved one side only (the same code's ``run`` ratio read 1.13x and 1.39x)."""
    imports = r["import_torch_torchvision"]["seconds"]
    return {
        "info_ratio": r["info"]["seconds"] / r["info"].get("import_s",
                                                            r["import_torch"]["seconds"]),
        "fixed_ratio": r["add_task_fixed"]["seconds"] / r["add_task_fixed"].get("import_s",
                                                                                imports),
        "run_ratio": r["sequence"]["run_fixed"] / r["sequence"].get("import_s", imports),
        "epoch_speed": r["plain_epoch"]["seconds"] / r["one_epoch"]["seconds"],
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    tasks = count_word(s.get("tasks", 5))
    note = f"_{s['note']}_\n\n" if s.get("note") else ""
    rows = [
        ["`packtool --help`", fmt(r["help"]["seconds"], 2), fmt(r["help"]["mb"]),
         f"<= {TARGETS['help_s']} s, <= {TARGETS['help_mb']:.0f} MB"],
        ["`packtool --version`", fmt(r["version"]["seconds"], 2), fmt(r["version"]["mb"]),
         f"<= {TARGETS['help_s']} s, <= {TARGETS['help_mb']:.0f} MB"],
        *([["`packtool run PLAN.toml`, a plan with a bad value (refused)",
            fmt(r["plan_error"]["seconds"], 2), fmt(r["plan_error"]["mb"]),
            f"<= {TARGETS['help_s']} s, <= {TARGETS['help_mb']:.0f} MB"]]
          if "plan_error" in r else []),  # records from before it was measured
        [f"`packtool predict FILE.onnx` on 8 JPEGs ({s['arch']}, {s['size']} px)",
         fmt(r["predict"]["seconds"], 2), fmt(r["predict"]["mb"]),
         f"<= {TARGETS['predict_s']} s, <= {TARGETS['predict_mb']:.0f} MB"],
    ]
    if s.get("torch_figures", True):  # records from before the setting measured them all
        rows += _torch_rows(r, tasks)
    return (f"{note}### Whole processes, from start to exit (median of {s['repeats']})\n\n"
            + markdown_table(["command", "seconds", "peak MB", "against the target"], rows,
                             ["l", "r", "r", "l"]))


def _torch_rows(r: dict[str, Any], tasks: str) -> list[list[str]]:
    s, q = r["settings"], ratios(r)
    return [
        ['`python -c "import torch"`', fmt(r["import_torch"]["seconds"], 2),
         fmt(r["import_torch"]["mb"]), ""],
        ['`python -c "import torch, torchvision"`',
         fmt(r["import_torch_torchvision"]["seconds"], 2),
         fmt(r["import_torch_torchvision"]["mb"]), ""],
        ["`packtool info MODEL`", fmt(r["info"]["seconds"], 2), fmt(r["info"]["mb"]),
         f"{q['info_ratio']:.2f}x import torch (<= {TARGETS['info_ratio']}x)"],
        ["`packtool add-task` on digits {0,1}, 1 epoch: wall time",
         fmt(r["add_task_fixed"]["wall"], 2), fmt(r["add_task_fixed"]["mb"]), ""],
        ["... of which fixed cost (wall minus its `seconds`)",
         fmt(r["add_task_fixed"]["seconds"], 2), "",
         f"{q['fixed_ratio']:.2f}x import torch, torchvision (<= {TARGETS['fixed_ratio']}x)"],
        [f"{tasks} digits tasks through `packtool run`: wall time",
         fmt(r["sequence"]["run_wall"], 2), "", ""],
        ["... of which fixed cost (wall minus the tasks' `seconds`)",
         fmt(r["sequence"]["run_fixed"], 2), "",
         f"{q['run_ratio']:.2f}x import torch, torchvision (<= {TARGETS['run_ratio']}x)"],
        [f"the same through `init` and {tasks} `add-task` calls: wall time",
         fmt(r["sequence"]["calls_wall"], 2), "", ""],
        ["... of which fixed cost", fmt(r["sequence"]["calls_fixed"], 2), "", ""],
        [f"one-epoch task on {s['images']} JPEGs, `packtool add-task`",
         fmt(r["one_epoch"]["seconds"], 2), fmt(r["one_epoch"]["mb"]),
         f"{q['epoch_speed']:.2f}x the plain script's speed (>= {TARGETS['epoch_speed']}x)"],
        ["... the plain torchvision script (2 loader workers)",
         fmt(r["plain_epoch"]["seconds"], 2), fmt(r["plain_epoch"]["mb"]), ""],
    ]
