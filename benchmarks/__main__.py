"""``python -m benchmarks [--quick | --smoke] [--only PART] [--json-out PATH]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import architectures, cost, deploy, planner, quality, startup, taskfree, throughput
from .common import machine

PARTS = {"quality": quality, "planner": planner, "taskfree": taskfree, "cost": cost,
         "deploy": deploy, "architectures": architectures, "throughput": throughput,
         "startup": startup}


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
    parser.add_argument("--only", choices=sorted(PARTS), help="run only this part")
    parser.add_argument("--json-out", type=Path, metavar="PATH",
                        help="also write every measured value as JSON to PATH")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    mode = args.mode or "full"

    def log(text: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    doc: dict[str, Any] = {"mode": mode, "command": " ".join(["python -m benchmarks",
                                                               *sys.argv[1:]]),
                           "machine": machine()}
    names = [args.only] if args.only else list(PARTS)
    sections = []
    for name in names:
        part_start = time.perf_counter()
        doc[name] = PARTS[name].run(mode, log=log)
        doc[name]["seconds"] = time.perf_counter() - part_start
        sections.append(f"## {name.capitalize()} ({mode} mode, "
                        f"{doc[name]['seconds']:.0f} s)\n\n{PARTS[name].markdown(doc[name])}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
