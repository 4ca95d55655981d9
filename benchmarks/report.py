"""The recorded results: one JSON file per part in ``benchmarks/results/``, and the pages made
from them, ``docs/benchmarks.md`` and the README's headline table.

``python -m benchmarks --record`` runs parts in full mode, stores each as
``results/<part>.json`` and re-renders both; ``python -m benchmarks --render`` re-renders from the
stored files alone. Nothing on those pages is typed by hand: a test re-renders them and compares.

A stored part: ``{"part", "mode", "command", "machine", "recorded" (UTC date), "packtool"
(version), "commit" (or null), "seconds", "result"}``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packtool import __version__

from .common import fmt, markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
HEADLINE_BEGIN, HEADLINE_END = "<!-- headline: begin -->", "<!-- headline: end -->"

INTRO = """# Benchmarks

Every table here is rendered from `benchmarks/results/<part>.json` by `python -m benchmarks
--render`; `python -m benchmarks --record [--only PART]` reruns parts in full mode and stores
them (`python -m benchmarks --quick` and `--smoke` run shorter schedules and store nothing; the
test suite runs `--smoke` so the benchmarks cannot rot). Each part's heading says when and on
what it was recorded.

- **Quality**: three sequences of digit tasks, PackNet against separate networks (one per task),
  plain fine-tuning (forgetting) and joint training, and `--prune auto` at its defaults.
- **Planner**: `--prune auto` against the fixed ratios seed by seed over ten seeds (paired
  differences), with and without the tasks still to come (`--reserve`, `init --tasks`).
- **Taskfree**: serving without the task id: how often the task is identified, per image and per
  group, calibrated and not, with each task score.
- **Cost**: the masking overhead of a training step, pruning a large network, and the files of a
  five-task pack (sparse ONNX, the archive against its information and entropy floors).
- **Deploy**: which file to ship: bytes, onnxruntime memory and latency, accuracy change.
- **Architectures**: what is packed in each torchvision family, a training step against dense,
  and the ONNX export of each.
- **Throughput**: add-task on JPEG folders against a plain torchvision loop.
- **Startup**: what a command costs from process start, imports included.
"""


def store(part: str, result: dict[str, Any], *, mode: str, command: str,
          machine: dict[str, Any], seconds: float) -> Path:
    """Write ``results/<part>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{part}.json"
    doc = {"part": part, "mode": mode, "command": command, "machine": machine,
           "recorded": time.strftime("%Y-%m-%d", time.gmtime()), "packtool": __version__,
           "commit": _commit(), "seconds": seconds, "result": result}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def stored() -> dict[str, dict[str, Any]]:
    """Every stored part, by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def page(parts: dict[str, Any], renderers: dict[str, Callable[[dict[str, Any]], str]]) -> str:
    """``docs/benchmarks.md``: the intro, then each stored part, in the order of ``renderers``
    (a part's ``markdown`` function by name)."""
    sections = [INTRO.rstrip()]
    for name, markdown in renderers.items():
        if name not in parts:
            continue
        doc = parts[name]
        m = doc["machine"]
        sections.append(
            f"## {name.capitalize()}\n\n_{doc['mode']} mode, {doc['seconds']:.0f} s, recorded "
            f"{doc['recorded']} with packtool {doc['packtool']} on {m['cpu']} ({m['cpu_count']} "
            f"CPUs), torch {m['torch']}, onnxruntime {m['onnxruntime']}, Python "
            f"{m['python']}: `{doc['command']}`._\n\n" + markdown(doc["result"]))
    return "\n\n".join(sections) + "\n"


def headline(parts: dict[str, Any]) -> str:
    """The README's results table: average accuracy over each quality sequence's tasks (median
    of its seeds), and PackNet's forgetting."""
    if "quality" not in parts:
        return "_No quality results recorded._"
    rows = []
    for seq in parts["quality"]["result"]["sequences"]:
        by = {r["method"]: r for r in seq["rows"]}
        rows.append([f"{seq['sequence']} ({len(seq['tasks'])} tasks, {seq['arch']})",
                     _pct(by["packnet-0.75"]["avg_accuracy"]),
                     _pct(by["packnet-auto"]["avg_accuracy"]),
                     _pct(by["separate"]["avg_accuracy"]),
                     _pct(by["finetune"]["avg_accuracy"]),
                     fmt(100 * by["packnet-0.75"]["avg_forgetting"], 2),
                     fmt(100 * by["finetune"]["avg_forgetting"], 2)])
    return markdown_table(["sequence", "PackNet 0.75", "PackNet auto", "separate networks",
                           "fine-tuning", "PackNet forgetting, pts",
                           "fine-tuning forgetting, pts"], rows)


def render(renderers: dict[str, Callable[[dict[str, Any]], str]]) -> None:
    """Rewrite ``docs/benchmarks.md`` and the README's headline table from the stored parts."""
    parts = stored()
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(page(parts, renderers))
    README.write_text(with_headline(README.read_text(), headline(parts)))


def with_headline(readme: str, table: str) -> str:
    """``readme`` with the text between the headline markers replaced by ``table``."""
    start, end = readme.index(HEADLINE_BEGIN), readme.index(HEADLINE_END)
    return readme[:start + len(HEADLINE_BEGIN)] + "\n" + table + "\n" + readme[end:]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return done.stdout.strip() or None
