"""``python -m benchmarks [--quick | --smoke] [--only PART] [--json-out PATH] [--record]``, or
``python -m benchmarks --render``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .common import machine

#: The parts, in the order they run and render: each is the module ``benchmarks.<name>``,
#: loaded when it is used (``--help`` and a bad argument load none of torch).
PARTS = ("quality", "planner", "growth", "refit", "taskfree", "serving", "cost", "deploy",
         "architectures", "throughput", "startup")


def part(name: str) -> Any:
    """The module of part ``name``."""
    return importlib.import_module(f"{__package__}.{name}")


def renderers() -> dict[str, Any]:
    """Every part's ``markdown`` function, by name, in :data:`PARTS` order."""
    return {name: part(name).markdown for name in PARTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="packtool benchmarks: quality on real data and the costs of packing (CPU).",
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_const", const="quick", dest="mode",
                       help="fewer epochs, smaller cost cases: a few minutes on 2 cores")
    speed.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                       help="the tiniest settings, only to check that everything runs")
    parser.add_argument("--only", choices=sorted(PARTS), action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--json-out", type=Path, metavar="PATH",
                        help="also write every measured value as JSON to PATH")
    parser.add_argument("--record", action="store_true",
                        help="store each part's result in benchmarks/results/<part>.json (full "
                             "mode only) and re-render docs/benchmarks.md and the README table")
    parser.add_argument("--render", action="store_true",
                        help="only re-render docs/benchmarks.md and the README table from the "
                             "stored results")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    mode = args.mode or "full"
    if args.render:
        report.render(renderers())
        return 0
    if args.record and mode != "full":
        parser.error("--record stores full-mode results only")

    def log(text: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    doc: dict[str, Any] = {"mode": mode, "command": command, "machine": machine()}
    sections = []
    for name in args.only or list(PARTS):
        part_start = time.perf_counter()
        doc[name] = part(name).run(mode, log=log)
        seconds = time.perf_counter() - part_start
        doc[name]["seconds"] = seconds
        sections.append(f"## {name.capitalize()} ({mode} mode, {seconds:.0f} s)\n\n"
                        f"{part(name).markdown(doc[name])}")
        if args.record:
            result = {k: v for k, v in doc[name].items() if k != "seconds"}
            path = report.store(name, result, mode=mode, command=command,
                                machine=doc["machine"], seconds=seconds)
            log(f"stored {path}")
    doc["seconds"] = time.perf_counter() - started
    m = doc["machine"]
    print(f"# packtool benchmarks ({mode})\n\nMachine: {m['cpu']}, {m['cpu_count']} CPUs, "
          f"torch {m['torch']} ({m['torch_threads']} threads), onnxruntime {m['onnxruntime']}, "
          f"Python {m['python']}. Total wall time {doc['seconds']:.0f} s.\n")
    print("\n\n".join(sections))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json_out}")
    if args.record:
        report.render(renderers())
        log(f"rendered {report.PAGE} and the README's headline table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
