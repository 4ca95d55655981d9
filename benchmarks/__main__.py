"""``python -m benchmarks [--quick | --smoke [--jobs N]] [--only PART] [--json-out PATH]
[--record]``, or ``python -m benchmarks --render``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .common import machine
from .parts import PARTS, logger, part, renderers, run_part, run_side_by_side


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
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="with --smoke: run the parts in N processes of one thread each "
                             "(default: one per core)")
    args = parser.parse_args(argv)
    mode = args.mode or "full"
    if args.jobs is not None and (mode != "smoke" or args.jobs < 1):
        parser.error("--jobs takes a count >= 1, with --smoke only (measurements run one at a "
                     "time: side by side they would disturb each other's timings)")
    if args.render:
        report.render(renderers())
        return 0
    if args.record and mode != "full":
        parser.error("--record stores full-mode results only")

    log = logger(args.quiet)
    started = time.perf_counter()
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    names = args.only or list(PARTS)
    jobs = min(args.jobs or os.cpu_count() or 1, len(names)) if mode == "smoke" else 1
    doc: dict[str, Any] = {"mode": mode, "command": command, "machine": machine(), "jobs": jobs}
    done = run_side_by_side(names, mode, args.quiet, jobs) if jobs > 1 else {}
    sections = []
    for name in names:
        result, seconds = done[name] if name in done else run_part(name, mode, args.quiet)
        doc[name] = {**result, "seconds": seconds}
        sections.append(f"## {name.capitalize()} ({mode} mode, {seconds:.0f} s)\n\n"
                        f"{part(name).markdown(doc[name])}")
        if args.record:
            path = report.store(name, result, mode=mode, command=command,
                                machine=doc["machine"], seconds=seconds)
            log(f"stored {path}")
    doc["seconds"] = time.perf_counter() - started
    m = doc["machine"]
    threads = (f"{jobs} processes of 1 thread" if jobs > 1 else f"{m['torch_threads']} threads")
    print(f"# packtool benchmarks ({mode})\n\nMachine: {m['cpu']}, {m['cpu_count']} CPUs, "
          f"torch {m['torch']} ({threads}), onnxruntime {m['onnxruntime']}, "
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
