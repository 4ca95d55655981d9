"""Deploying: every export form's bytes, onnxruntime memory with all tasks loaded, latency.

For each pack (Split-Digits tasks, as in :mod:`benchmarks.cost`):

* the forms: ``T`` per-task float32 ONNX files (sparse where smaller), ``T`` float16 and ``T``
  int8 files (:mod:`packtool.exporters.quantize`, each with its accuracy change on the task's
  test split), one multi-task ONNX, and the archive (bytes only: PyTorch serves it);
* bytes on disk of each form, all tasks together;
* memory: the resident-set growth of a fresh process that loads the form's sessions (default
  session options, CPU provider) and runs every task at batch 1 and 32, three rounds (the
  arena reaches its steady size), over the same process before loading; again with the CPU
  memory arena off (which keeps no spare blocks); also one per-task session alone (issue
  16's target: the multi-task session <= 1.2x a single task's);
* latency of the last task (it uses every owned weight), batch 1 and 32, all forms interleaved;
* the archive against its entropy floor for 3, 5 and 10 tasks (issue 16's target: <= 1.02x).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from packtool import Pack
from packtool.exporters import archive_bytes, export_multi_task, export_onnx, export_reduced

from .common import fmt, fmt_int, interleaved_medians, markdown_table
from .cost import LENET, MLP_SMOKE, RESNET, PackCase, archive_floor, build_pack

CPU = "CPUExecutionProvider"
FORMS = ("float32", "float16", "int8", "multi-task")

# Run in a fresh interpreter: load the given ONNX files, run every task three rounds at batch 1
# and 32, print the resident-set growth (MB) over the process before loading.
_MEMORY_SCRIPT = r"""
import json, sys
import numpy as np, onnxruntime as ort

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

shape, tasks, arena, files = (json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "arena",
                              sys.argv[4:])
options = ort.SessionOptions()
options.enable_cpu_mem_arena = arena
inputs = {b: np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
          for b in (1, 32)}
base = rss()
sessions = [ort.InferenceSession(f, options, providers=["CPUExecutionProvider"]) for f in files]
for _ in range(3):
    for b, x in inputs.items():
        for s in sessions:
            if len(s.get_inputs()) == 2:
                for t in range(1, tasks + 1):
                    s.run(None, {"input": x, "task": np.array([t], dtype=np.int64)})
            else:
                s.run(None, {"input": x})
print(json.dumps({"rss_mb": rss() - base}))
"""


@dataclass(frozen=True)
class DeploySettings:
    packs: tuple[PackCase, ...]
    floor_tasks: tuple[int, ...]  # LeNet packs of this many tasks: archive vs entropy floor
    latency_budget_s: float
    memory_repeats: int  # processes per memory value (the median is reported)
    note: str = ""


SMOKE = replace(MLP_SMOKE, tasks=1)
SETTINGS = {
    "smoke": DeploySettings((SMOKE,), (2,), 0.2, 1, note="smoke: tiny cases only; not a "
                                                      "measurement"),
    "quick": DeploySettings((LENET,), (3, 5), 2.0, 3, note="quick: no resnet18 case"),
    "full": DeploySettings((LENET, RESNET), (3, 5, 10), 10.0, 3),
}


def export_forms(pack: Pack, folder: Path) -> dict[str, Any]:
    """Every form's files in ``folder``; the reduced ones with their accuracy changes."""
    forms: dict[str, Any] = {form: {"files": [], "changes": []} for form in FORMS}
    for record in pack.tasks:
        path = folder / f"{record.index}-float32.onnx"
        export_onnx(pack, record.name, path)
        forms["float32"]["files"].append(path)
        for precision in ("float16", "int8"):
            path = folder / f"{record.index}-{precision}.onnx"
            done = export_reduced(pack, record.name, path, precision, force=True)
            forms[precision]["files"].append(path)
            forms[precision]["changes"].append(done.change.accuracy_change)
    multi = export_multi_task(pack, folder / "multi.onnx")
    forms["multi-task"]["files"].append(multi.path)
    forms["multi-task"]["max_abs_diff"] = multi.max_abs_diff
    return forms


def memory_mb(files: list[Path], shape: tuple[int, ...], tasks: int, arena: bool = True,
              repeats: int = 3) -> float:
    """Resident-set growth of a fresh process serving ``files`` (see the module docstring),
    the median of ``repeats`` processes (it varies by ~15% from one to the next);
    ``arena``: onnxruntime's CPU memory arena on (the default) or off."""
    values = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, json.dumps(list(shape)),
                               str(tasks), "arena" if arena else "off", *map(str, files)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory measurement failed: {done.stderr.strip()[-2000:]}")
        values.append(json.loads(done.stdout.strip().splitlines()[-1])["rss_mb"])
    return float(np.median(values))


def memory_table(jobs: dict[Any, list[Path]], shape: tuple[int, ...], tasks: int,
                 repeats: int) -> dict[tuple[Any, bool], float]:
    """:func:`memory_mb` of each job's files, arena on and off, keyed ``(job, arena)``; two
    measuring processes at a time (each measures its own resident set, so they do not disturb
    each other's figure; the processes are mostly interpreter start-up)."""
    keys = [(job, arena) for job in jobs for arena in (True, False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        values = pool.map(lambda key: memory_mb(jobs[key[0]], shape, tasks, arena=key[1],
                                                repeats=repeats), keys)
        return dict(zip(keys, values, strict=True))


def latency(pack: Pack, forms: dict[str, Any], budget_s: float) -> list[dict[str, Any]]:
    """Median ms per call of the last task in every form, interleaved, batch 1 and 32."""
    task = len(pack.tasks)
    sessions = {form: ort.InferenceSession(str(f["files"][-1]), providers=[CPU])
                for form, f in forms.items()}
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, *pack.spec.input_size,
                        generator=torch.Generator().manual_seed(0)).numpy()
        calls = {}
        for form, sess in sessions.items():
            feed = {"input": x}
            if form == "multi-task":
                feed["task"] = np.array([task], dtype=np.int64)
            calls[form] = (lambda s=sess, f=feed: s.run(None, f))
        t, repeats = interleaved_medians(calls, budget_s)
        rows.append({"batch": batch, "repeats": repeats,
                     **{f"{form}_ms": 1e3 * t[form] for form in FORMS}})
    return rows


def pack_case(case: PackCase, settings: DeploySettings, log: Any = None) -> dict[str, Any]:
    pack, seconds = build_pack(case)
    if log:
        log(f"deploy {case.name}: pack of {len(pack.tasks)} tasks built in {seconds:.1f} s")
    with tempfile.TemporaryDirectory(prefix="packtool-deploy-") as tmp:
        forms = export_forms(pack, Path(tmp))
        shape, tasks = pack.spec.input_size, len(pack.tasks)
        jobs = {"single": forms["float32"]["files"][-1:],
                **{form: f["files"] for form, f in forms.items()}}
        memory = memory_table(jobs, shape, tasks, settings.memory_repeats)
        single, single_off = memory["single", True], memory["single", False]
        rows = []
        for form, f in forms.items():
            rows.append({
                "form": form, "files": len(f["files"]),
                "bytes": sum(p.stat().st_size for p in f["files"]),
                "memory_mb": memory[form, True],
                "memory_no_arena_mb": memory[form, False],
                "accuracy_change_mean": (float(np.mean(f["changes"])) if f["changes"]
                                         else None),
                "accuracy_change_worst": min(f["changes"]) if f["changes"] else None,
            })
        timing = latency(pack, forms, settings.latency_budget_s)
    archive = len(archive_bytes(pack))
    return {"case": case.name, "arch": case.arch, "tasks": tasks, "note": case.note,
            "forms": rows, "single_task_memory_mb": single,
            "single_task_memory_no_arena_mb": single_off, "archive_bytes": archive,
            "multi_task_over_archive": rows[-1]["bytes"] / archive,
            "multi_task_max_abs_diff": forms["multi-task"]["max_abs_diff"],
            "latency": timing}


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    result: dict[str, Any] = {"settings": {**asdict(settings),
                                           "packs": [asdict(p) for p in settings.packs]}}
    result["packs"] = [pack_case(case, settings, log) for case in settings.packs]
    floors = []
    base = settings.packs[0] if mode == "smoke" else LENET
    for tasks in settings.floor_tasks:
        pack, _ = build_pack(replace(base, tasks=tasks))
        floors.append({"case": base.name, **archive_floor(pack)})
        if log:
            log(f"deploy: archive of {tasks} tasks measured")
    result["floors"] = floors
    return result


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    parts = [f"_{settings['note']}_"] if settings.get("note") else []
    for case in result["packs"]:
        names = {"float32": "per-task ONNX, float32", "float16": "per-task ONNX, float16",
                 "int8": "per-task ONNX, int8", "multi-task": "one multi-task ONNX"}
        times = {r["batch"]: r for r in case["latency"]}
        rows = [[names[r["form"]], r["files"], fmt_int(r["bytes"]), fmt(r["memory_mb"], 1),
                 fmt(r["memory_no_arena_mb"], 1),
                 fmt(times[1][f"{r['form']}_ms"], 3), fmt(times[32][f"{r['form']}_ms"], 2),
                 fmt(r["accuracy_change_mean"], 2), fmt(r["accuracy_change_worst"], 2)]
                for r in case["forms"]]
        rows.append(["archive (pack.safetensors)", 1, fmt_int(case["archive_bytes"]), "-", "-",
                     "-", "-", "-", "-"])
        multi = case["forms"][-1]
        parts.append(
            f"### {case['case']}: {case['tasks']} Split-Digits tasks; {case['note']}\n\n"
            + markdown_table(
                ["form", "files", "bytes", "ORT memory MB, all tasks", "arena off MB", "batch 1 ms",
                 "batch 32 ms", "accuracy change, mean pts", "worst pts"], rows)
            + f"\n\nMemory: resident-set growth of a fresh process serving every task (each "
              f"task at batch 1 and 32, three rounds; median of {settings['memory_repeats']} "
              f"processes). "
              f"One per-task session alone: "
              f"{case['single_task_memory_mb']:.1f} MB, so the multi-task session is "
              f"{multi['memory_mb'] / case['single_task_memory_mb']:.2f}x a single task's "
              f"(target <= 1.2x); with onnxruntime's CPU memory arena off "
              f"(`SessionOptions.enable_cpu_mem_arena = False`) "
              f"{case['single_task_memory_no_arena_mb']:.1f} MB and "
              f"{multi['memory_no_arena_mb'] / case['single_task_memory_no_arena_mb']:.2f}x. "
              f"Latency: the last task, median, all forms interleaved. "
              f"Multi-task file / archive: {case['multi_task_over_archive']:.3f} (target "
              f"<= 1.05); its largest logit difference from PyTorch over every task "
              f"{case['multi_task_max_abs_diff']:.1e}.")
    parts.append(
        "### The archive against its entropy floor\n\n" + markdown_table(
            ["case", "tasks", "owner bits (entropy)", "archive bytes", "entropy floor bytes",
             "archive / floor"],
            [[f["case"], f["tasks"], f"{f['owner_bits']} ({f['owner_entropy_bits']:.2f})",
              fmt_int(f["archive_bytes"]), fmt_int(f["entropy_floor_bytes"]),
              f"{f['archive_over_entropy_floor']:.3f}"] for f in result["floors"]])
        + "\n\nEntropy floor: owned weights x 4 bytes + each layer's owner index at its "
          "empirical entropy + heads, private state and feature statistics (target <= 1.02x).")
    return "\n\n".join(parts)
