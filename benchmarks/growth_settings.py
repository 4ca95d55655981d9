"""Growth settings beside the shipped one: the table of docs/growth.md ("Neither the size limit
nor the search ...").

The growth part (:mod:`.growth`) measures ``--prune auto`` with the plan and ``--grow auto``
as shipped; this study asks whether other settings of growth by steps (the first task not
grown) close the gap to separate networks on the same long permuted sequence: a lower
``--tolerance``, a reserve that counts the room growth still allows, fixed ratios, a larger
``--max-size``; and, growing the first task to the limit in every seed (which ``--grow auto``
does when its trial gains), whether a lower tolerance, ``--refit``, ``--global-prune`` or more
fine-tuning (a higher rate, more epochs) does. Every row runs on the same seeds and is
compared seed by seed, as in the growth part. Not a part of ``python -m benchmarks``
(fourteen rows, about an hour and three quarters in full mode on one thread); run it on its
own::

    python -m benchmarks.growth_settings [--quick | --smoke] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import growth, quality

#: Growth by steps, as ``--grow auto`` did before it could grow a first task.
STEPS = {"first": {"grow": None}}
#: The first task grown to the limit of ``--max-size 3`` in every seed (69 of 32 units: the
#: widths :func:`packtool.growth.largest_growth` gives), the other tasks not grown.
LIMIT = {"max_size": 3.0, "first": {"grow": 1.15}}
#: method -> (label, options): :func:`.growth.run_method`'s ``prune``, ``reserve``,
#: ``first`` and ``config`` keys, the rest :func:`packtool.add_task`'s. The rows grow by steps
#: only (the first task not grown), but the last six, which grow the first task only.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "auto+plan+grow3": ("auto with the plan, --grow auto --max-size 3 (by steps)",
                        growth.GROWTH_METHODS["auto+plan+grow3-steps"][1]),
    "auto+plan+grow3+tol0.5": ("... and --tolerance 0.5 (ratio and growth)",
                               {"grow": "auto", "max_size": 3.0, "tolerance": 0.5, **STEPS}),
    "auto+room+grow3": ("auto, each reserve counting the room --max-size 3 still allows",
                        {"grow": "auto", "max_size": 3.0, "reserve": "room", **STEPS}),
    "0.75+grow3+tol0.5": ("prune 0.75 (no reserve), --grow auto --max-size 3 --tolerance 0.5",
                          {"prune": 0.75, "grow": "auto", "max_size": 3.0, "tolerance": 0.5,
                           **STEPS}),
    "0.5+grow3": ("prune 0.5, --grow auto --max-size 3",
                  {"prune": 0.5, "grow": "auto", "max_size": 3.0, **STEPS}),
    "0.75+grow10": ("prune 0.75, --grow auto --max-size 10",
                    {"prune": 0.75, "grow": "auto", "max_size": 10.0, **STEPS}),
    "0.75+grow10+tol0": ("prune 0.75, --grow auto --max-size 10 --tolerance 0",
                         {"prune": 0.75, "grow": "auto", "max_size": 10.0, "tolerance": 0.0,
                          **STEPS}),
    "auto+plan+first3": ("auto with the plan, the first task grown to --max-size 3 (--grow 1.15)",
                    {**LIMIT}),
    "auto+plan+first3+tol0.5": ("... and --tolerance 0.5", {**LIMIT, "tolerance": 0.5}),
    "auto+plan+first3+refit": ("... and --refit", {**LIMIT, "refit": True}),
    "auto+plan+first3+global": ("... and --global-prune",
                                {**LIMIT, "config": {"prune_scope": "global"}}),
    "auto+plan+first3+ftlr": ("... and --finetune-lr 0.05 (the training rate, 10x)",
                              {**LIMIT, "config": {"finetune_lr": 0.05}}),
    "auto+plan+first3+ft20": ("... and --finetune-epochs 20 (twice as many)",
                              {**LIMIT, "config": {"finetune_epochs": 20}}),
    "separate": growth.GROWTH_METHODS["separate"],
}


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = replace(quality.SETTINGS[mode], seeds=growth.SEEDS[mode])
    return {"settings": asdict(settings),
            "growth": growth.run_study(growth.GROWTH_SEQUENCE, METHODS, settings, log)}


def markdown(result: dict[str, Any]) -> str:
    """Two tables of the same rows: against the shipped setting, and against separate
    networks (negative: behind them)."""
    study = result["growth"]
    return "\n\n".join([growth.preamble(result["settings"]),
                        growth.study_table(study, "auto+plan+grow3"),
                        growth.study_table(study, "separate")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth_settings",
                                     description=__doc__.split("\n\n")[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="the quick schedule, three seeds")
    speed.add_argument("--smoke", action="store_true", help="the tiniest settings, one seed")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    result = run(mode, log=lambda line: print(line, flush=True))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
