"""``packtool``: the command line (commands, options and ``--json`` shapes of the contract v1).

This module declares every command and its options with click alone and checks the usage, so
``--help``, ``--version`` and a usage error start in a fraction of a second. Each command's body
runs the public API of :mod:`packtool` and :mod:`packtool.exporters` from its own module,
``cli/commands/<command>.py``, imported when the command runs (:func:`dispatch`): a command
loads only what it uses (``predict`` on an ONNX file: onnxruntime, numpy and Pillow, no
torch). Every error
is one ``Error: ...`` line on stderr with exit status 1 (2 for usage errors), and no command
writes MODEL unless it succeeds.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from packtool import __version__
from packtool.choices import AUTO, DATASET_NAMES, FREE_INITS, OPTIMIZERS, POLICIES, SCORES
from packtool.errors import PackToolError
from packtool.formats.sniff import is_onnx, is_pack_file
from packtool.plan import read_plan

from . import params
from .errors import ErrorHandlingGroup

#: Packages a command's module may need that a serving install (onnxruntime, numpy, Pillow)
#: does not have.
TRAINING_STACK = ("torch", "torchvision", "onnx", "onnxscript", "sklearn", "scipy",
                  "safetensors", "constriction")


def dispatch(command: str, **arguments: Any) -> None:
    """Run ``command``'s body: ``cli/commands/<command>.py``, imported now. This is the one
    import the command line defers, so that each command loads only what it uses."""
    try:
        module = importlib.import_module(f"packtool.cli.commands.{command}")
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in TRAINING_STACK:
            raise
        raise PackToolError(
            f"this command needs {missing}, which is not installed here (an install for serving "
            "has onnxruntime, numpy and Pillow only); `pip install packtool` brings everything"
        ) from None
    module.run(**arguments)


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="packtool")
@click.option("--debug", is_flag=True, envvar="PACKTOOL_DEBUG",
              help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Pack several tasks into one network with PackNet and export per-task ONNX models.

    MODEL defaults to model.pt in the current directory.
    """


# -- init -------------------------------------------------------------------------------------


@main.command()
@params.model_argument
@click.option("--arch", required=True, metavar="ARCH",
              help="torchvision model name (vgg16, resnet18, ...), mlp, lenet, or "
                   "package.module:function.")
@click.option("--weights", metavar="PATH|DEFAULT",
              help="Initial weights: a local .pt/.pth/.safetensors state_dict, or DEFAULT for "
                   "torchvision's pretrained weights (only from the local torch hub cache).")
@click.option("--input-size", metavar="CxHxW", callback=params.input_size,
              help="Input image size [default: the architecture's native size: image_size= "
                   "if given, else torchvision's crop size for the name, else 3x224x224].")
@click.option("--policy", type=click.Choice(POLICIES), default="per_task",
              show_default=True,
              help="per_task: each task its own biases and norm state; frozen: the paper's "
                   "(task 1's are frozen and shared).")
@click.option("--free-init", type=click.Choice(FREE_INITS), default=FREE_INITS[0],
              show_default=True,
              help="How each new task's free weights start: fresh values of the network's own "
                   "initialization (reinit), the values the task that released them trained "
                   "(kept), or zero.")
@click.option("--kwarg", "kwargs", multiple=True, metavar="KEY=VALUE", callback=params.kwargs,
              help="Keyword argument for the architecture builder (repeatable), e.g. hidden=64.")
@click.option("--tasks", "planned_tasks", type=click.IntRange(1, 255), metavar="N",
              help="How many tasks MODEL is meant to hold, pretrained one included: each "
                   "add-task without --reserve keeps room for the rest of the plan.")
@click.option("--force", is_flag=True, help="Overwrite an existing MODEL.")
def init(model: Path, arch: str, weights: str | None, input_size: tuple[int, int, int] | None,
         policy: str, free_init: str, kwargs: dict[str, Any], planned_tasks: int | None,
         force: bool) -> None:
    """Create MODEL: a network with every weight free and no tasks."""
    dispatch("init", model=model, arch=arch, weights=weights, input_size=input_size, policy=policy,
        free_init=free_init, kwargs=kwargs, planned_tasks=planned_tasks, force=force)


# -- add-task ---------------------------------------------------------------------------------


@main.command("add-task")
@params.model_argument
@click.option("--data", required=True, metavar="DATA",
              help=f"Registered dataset ({', '.join(DATASET_NAMES)}) or an image folder with "
                   "train/ and val/ or test/.")
@click.option("--prune", type=params.PruneRatio(), required=True, metavar="RATIO|auto",
              help="Fraction of the task's trained weights to release, [0, 1), or auto: the "
                   "largest that keeps validation accuracy within --tolerance.")
@click.option("--tolerance", type=params.FiniteRange(min=0), metavar="PP",
              help="With --prune auto: validation accuracy points the task may lose [default: "
                   "1.0].")
@click.option("--auto-trials", type=click.IntRange(min=1), metavar="N",
              help="With --prune auto: fine-tuning trials at most [default: 3].")
@click.option("--reserve", type=click.IntRange(min=0), metavar="N",
              help="Keep room for N more tasks of this size in every layer (raises the ratio "
                   "where needed). With --prune auto, give the number of tasks still to come "
                   "if you know it [default: the rest of init --tasks, else 0].")
@click.option("--grow", type=params.GrowFraction(), metavar="FRACTION|auto",
              help="Widen every growable width of the network (info --growable lists them) by "
                   "this fraction of its original size for this task, or auto: in steps of "
                   "0.25 while each gains over --tolerance validation points [default "
                   "tolerance: 1.0]; a first task with tasks to come tries --max-size at once. "
                   "Earlier tasks run exactly as before.")
@click.option("--max-size", type=params.FiniteRange(min=1), metavar="X",
              help="With --grow: the network's prunable weights at most X times their original "
                   "number [default: 2].")
@click.option("--refit", is_flag=True,
              help="Then train the task again from the start on training + validation images, "
                   "with the ratio and epoch counts chosen on validation (about twice the "
                   "time; for small datasets).")
@click.option("--task", "name", metavar="NAME",
              help="Task name [default: DATA plus the classes, e.g. digits-0-1].")
@click.option("--classes", callback=params.classes, metavar="LIST",
              help="Subset of the dataset's classes, by index or name: e.g. 0,1 or 0-4 or "
                   "circle,hexagon.")
@click.option("--epochs", type=click.IntRange(min=0), default=20, show_default=True,
              metavar="N", help="Training epochs on the free weights.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=10, show_default=True,
              metavar="M", help="Fine-tuning epochs after pruning.")
@click.option("--lr", type=params.FiniteRange(min=0, min_open=True), metavar="LR",
              help="Training learning rate [default: 0.001, the paper's, for a network with "
                   "pretrained weights; else 0.05, from scratch].")
@click.option("--finetune-lr", type=params.FiniteRange(min=0, min_open=True), metavar="LR",
              help="Fine-tuning learning rate [default: 0.0001 with pretrained weights; else "
                   "0.005].")
@click.option("--lr-decay-epochs", type=click.IntRange(min=0), default=10, show_default=True,
              metavar="N", help="Multiply the training lr by 0.1 every N epochs (0: never).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              metavar="B")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd",
              show_default=True)
@click.option("--momentum", type=params.FiniteRange(min=0), default=0.9, show_default=True,
              metavar="M", help="SGD momentum.")
@click.option("--weight-decay", type=params.FiniteRange(min=0), default=0.0, show_default=True,
              metavar="WD")
@click.option("--global-prune", "prune_scope", flag_value="global", default="layer",
              help="Rank weights across all layers when pruning (default: the exact ratio in "
                   "every layer, as the paper).")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=params.Workers(), default="auto", show_default=True,
              metavar="auto|W", help="Data loading worker processes (auto: none for data in "
                                     "memory or small, else the CPUs available, at most 8).")
@click.option("--cache", type=params.Cache(), default="auto", show_default=True,
              metavar="auto|none|GB", help="Keep the images decoded in memory when they fit "
                                           "(auto: a quarter of the free memory, at most 4 GiB).")
@click.option("--amp", is_flag=True,
              help="Mixed precision: bfloat16 on the CPU, float16 (or bfloat16) on CUDA.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S",
              help="Seeds initialization, shuffling, augmentation and the validation split.")
@click.option("--val-fraction", type=params.FiniteRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Share of the training data held out for model selection.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder holding the registered datasets [default: $PACKTOOL_DATA].")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out image files that cannot be read (every file's header is checked "
                   "before training; without this flag, bad files stop the add-task).")
@click.option("--checkpoint-every", type=params.FiniteRange(min=0), default=0, show_default=True,
              metavar="MIN", help="Minutes between checkpoints (0: after every epoch); longer "
                                  "saves time on large networks, and a resume repeats more.")
@click.option("--resume", is_flag=True,
              help="Continue the add-task interrupted on MODEL from its last checkpoint.")
@click.option("--restart", is_flag=True,
              help="Discard the checkpoint of an interrupted add-task and start over.")
@params.json_option
@params.quiet_option
def add_task(model: Path, data: str, prune: float | str, tolerance: float | None,
             auto_trials: int | None, reserve: int | None, grow: float | str | None,
             max_size: float | None, refit: bool, name: str | None,
             classes: list[int] | None, data_root: str | None, val_fraction: float,
             skip_bad_images: bool, checkpoint_every: float, resume: bool, restart: bool,
             as_json: bool, quiet: bool, **options: Any) -> None:
    """Train a new task on the free weights, prune, fine-tune, and save MODEL.

    Progress is checkpointed beside MODEL after every epoch; after a crash or Ctrl-C, rerun the
    same command with --resume. Under torchrun, every process trains (DDP) and rank 0 saves.
    """
    if resume and restart:
        raise click.UsageError("use either --resume or --restart, not both")
    if prune != AUTO and auto_trials is not None:
        raise click.UsageError("--auto-trials applies to --prune auto only")
    if prune != AUTO and grow != AUTO and tolerance is not None:
        raise click.UsageError("--tolerance applies to --prune auto and --grow auto only")
    if max_size is not None and grow is None:
        raise click.UsageError("--max-size needs --grow")
    settings = {k: v for k, v in options.items() if v is not None}  # unset: the pack decides
    planner = {"tolerance": 1.0 if tolerance is None else tolerance,
               "auto_trials": 3 if auto_trials is None else auto_trials,
               "grow": grow, **({"max_size": max_size} if max_size is not None else {}),
               "refit": refit}
    click.get_current_context().meta["interrupted"] = (
        f"{model} was not changed; rerun with --resume to continue from the last completed epoch"
    )
    dispatch("add_task", model=model, data=data, prune=prune, settings=settings, planner=planner,
        as_json=as_json, quiet=quiet, reserve=reserve, name=name, classes=classes,
        data_root=data_root,
        val_fraction=val_fraction, skip_bad_images=skip_bad_images,
        checkpoint_every=60 * checkpoint_every, resume=resume, restart=restart)


# -- eval -------------------------------------------------------------------------------------


@main.command("eval")
@params.model_argument
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="Task to evaluate (repeatable) [default: all].")
@click.option("--all", "all_tasks", is_flag=True, help="Evaluate every task (the default).")
@click.option("--data", metavar="DATA",
              help="Evaluate on this dataset's test split instead of the task's own.")
@click.option("--classes", callback=params.classes, metavar="LIST",
              help="With --data: subset of its classes.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder holding the registered datasets [default: recorded, $PACKTOOL_DATA].")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              metavar="B")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also write an accuracy chart (needs matplotlib).")
@click.option("--task-free", is_flag=True,
              help="Serve every task's test split without its task id: how often the task is "
                   "identified, and the class accuracy without it.")
@click.option("--group", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With --task-free: identify the task of groups of N images of one task.")
@click.option("--task-score", type=click.Choice(SCORES),
              help="With --task-free: how tasks are scored [default: mahalanobis where every "
                   "task has feature statistics, else entropy].")
@click.option("--unknown", metavar="DATA",
              help="With --task-free: also serve images of none of the tasks, a dataset's "
                   "test split (--classes picks its classes) or every image below a folder "
                   "without train/: AUROC and the shares rejected.")
@params.json_option
@params.quiet_option
def eval_(model: Path, tasks: tuple[str, ...], all_tasks: bool, data: str | None,
          classes: list[int] | None, data_root: str | None, device: str, batch_size: int,
          plot: str | None, task_free: bool, group: int, task_score: str | None,
          unknown: str | None, as_json: bool, quiet: bool) -> None:
    """Re-evaluate tasks on their held-out test split.

    MODEL may be a model.pt or an archive.
    """
    if tasks and all_tasks:
        raise click.UsageError("use either --task or --all, not both")
    if classes is not None and data is None and unknown is None:
        raise click.UsageError("--classes needs --data or --unknown")
    if unknown is not None and not task_free:
        raise click.UsageError("--unknown needs --task-free")
    if task_free:
        if tasks or all_tasks or data or plot:
            raise click.UsageError("--task-free serves every task on its own test split: it "
                                   "takes no --task, --all, --data or --plot")
        return dispatch("eval", model=model, as_json=as_json, quiet=quiet, task_free=True,
                        group=group, score=task_score, root=data_root, batch_size=batch_size,
                        device=device, unknown=unknown, classes=classes)
    dispatch("eval", model=model, tasks=tasks, data=data, classes=classes, data_root=data_root,
        device=device, batch_size=batch_size, plot=plot, as_json=as_json, quiet=quiet)


# -- info -------------------------------------------------------------------------------------


@main.command()
@params.model_argument
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also write a per-layer capacity chart (needs matplotlib).")
@click.option("--share", type=params.FiniteRange(0, 1, min_open=True), metavar="S",
              help="Also forecast how many tasks fit that each own this share of every layer.")
@click.option("--growable", is_flag=True,
              help="Also list the widths add-task --grow can widen (traces the network).")
@params.json_option
def info(model: Path, plot: str | None, share: float | None, growable: bool,
         as_json: bool) -> None:
    """Show MODEL's tasks and how much of each layer each task owns.

    MODEL may be a model.pt or an archive; for an exported ONNX file, its tasks, classes,
    input and precision.
    """
    if is_onnx(model):  # an exported file: read with onnxruntime alone
        given = [flag for flag, value in (("--plot", plot), ("--share", share),
                                          ("--growable", growable)) if value]
        if given:
            raise click.UsageError(f"{given[0]} applies to a model.pt or an archive, not to "
                                   "an ONNX file")
        dispatch("info_onnx", model=model, as_json=as_json)
        return
    dispatch("info", model=model, plot=plot, share=share, growable=growable, as_json=as_json)


# -- export -----------------------------------------------------------------------------------


@main.command()
@params.model_argument
@click.option("--task", "name", metavar="NAME", help="Export this task to ONNX.")
@click.option("--all", "all_tasks", is_flag=True,
              help="Export every task to ONNX, plus the archive, into --out DIR.")
@click.option("--multi-task", is_flag=True,
              help="Export every task to one ONNX file (--out FILE.onnx) with a task input.")
@click.option("--archive", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write only the shared-weight archive of every task.")
@click.option("--out", type=click.Path(), metavar="PATH",
              help="ONNX file (--task, --multi-task) or folder (--all; with --task: "
                   "<task>.onnx in it) [--task default: <task>.onnx].")
@click.option("--dense", is_flag=True, help="Store every weight dense (default: sparse where "
                                            "smaller).")
@click.option("--opset", type=click.IntRange(min=1), default=18, show_default=True,
              metavar="N", help="ONNX opset (18 or newer).")
@click.option("--no-verify", is_flag=True,
              help="Skip comparing onnxruntime's outputs with PyTorch's.")
@click.option("--half", is_flag=True,
              help="float16 weights (--task, --archive); reports the accuracy change on the "
                   "test split.")
@click.option("--int8", is_flag=True,
              help="With --task: int8 through onnxruntime.quantization (static, calibrated on "
                   "training images, for conv nets); reports the accuracy change.")
@click.option("--max-drop", type=params.FiniteRange(min=0), default=None, metavar="PP",
              help="With --task --int8/--half: refuse to write if test accuracy drops by more "
                   "than PP points [default: 1.0].")
@click.option("--force", is_flag=True,
              help="With --task --int8/--half: write even past --max-drop, or without data to "
                   "measure on.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DIR",
              help="With --half/--int8: where the tasks' datasets live [default: recorded, "
                   "$PACKTOOL_DATA].")
@params.json_option
@params.quiet_option
def export(model: Path, name: str | None, all_tasks: bool, multi_task: bool,
           archive: str | None, out: str | None, dense: bool, opset: int, no_verify: bool,
           half: bool, int8: bool, max_drop: float | None, force: bool, data_root: str | None,
           as_json: bool, quiet: bool) -> None:
    """Export tasks to ONNX (one file per task, or one for every task), or every task to one
    shared-weight archive.

    MODEL may be a model.pt or an archive.
    """
    params.check_export_mode(name, all_tasks, multi_task, archive, out)
    params.check_export_options(name, multi_task, archive, dense, half, int8, max_drop, force,
                          data_root)
    dispatch("export", model=model, name=name, all_tasks=all_tasks, multi_task=multi_task,
        archive=archive, out=out, dense=dense, opset=opset, no_verify=no_verify, half=half,
        int8=int8, max_drop=max_drop, force=force, data_root=data_root, as_json=as_json,
        quiet=quiet)


# -- predict ----------------------------------------------------------------------------------


@main.command()
@click.argument("source", metavar="FILE", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...",
                type=click.Path(path_type=Path))
@click.option("--task", "name", metavar="NAME|auto",
              help="Task to run (required with a pack file or a multi-task ONNX); auto: every "
                   "task runs and each image goes to the task that scores it best.")
@click.option("--same-task", is_flag=True,
              help="With --task auto: the IMAGEs come from one task, chosen by their summed "
                   "scores.")
@click.option("--task-score", type=click.Choice(SCORES),
              help="With --task auto: how tasks are scored [default: mahalanobis where every "
                   "task has feature statistics, else entropy].")
@click.option("--reject", is_flag=True,
              help="With --task auto: answer no task (task null) for an image of none of the "
                   "tasks: its feature distance passes its nearest task's threshold.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, metavar="K",
              help="How many classes to show per image.")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out image files that cannot be read (listed after the predictions) "
                   "instead of stopping at the first.")
@params.json_option
@params.quiet_option
def predict(source: Path, images: tuple[Path, ...], name: str | None, same_task: bool,
            task_score: str | None, reject: bool, top: int, skip_bad_images: bool,
            as_json: bool, quiet: bool) -> None:
    """Classify IMAGEs with an exported ONNX file or a pack file (archive or model.pt).

    An IMAGE that is a folder stands for every image below it (sorted; hidden files left
    out)."""
    if same_task and name != AUTO:
        raise click.UsageError("--same-task needs --task auto")
    if reject and (name != AUTO or same_task or task_score not in (None, "mahalanobis")):
        raise click.UsageError("--reject needs --task auto, no --same-task and the mahalanobis "
                               "task score")
    # A pack file is exported to ONNX in memory first, which needs the training stack.
    dispatch("predict_pack" if is_pack_file(source) else "predict", source=source, images=images,
        name=name, same_task=same_task, task_score=task_score, reject=reject, top=top,
        skip_bad_images=skip_bad_images, as_json=as_json, quiet=quiet)


# -- run --------------------------------------------------------------------------------------


@main.command("run")
@click.argument("plan", metavar="PLAN.toml", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path), default=params.DEFAULT_MODEL,
              show_default=True, metavar="MODEL",
              help="The model file: created from the plan's [network] if it does not exist, "
                   "else continued.")
@click.option("--reference", is_flag=True,
              help="Also train each task alone on a fresh copy of the starting network with "
                   "the same budget, and report the cost of packing per task.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write per-epoch scalars: DIR/scalars.csv, and TensorBoard events when the "
                   "tensorboard package is installed.")
@params.json_option
@params.quiet_option
def run_plan(plan: Path, model: Path, reference: bool, log_dir: Path | None,
             as_json: bool, quiet: bool) -> None:
    """Run a whole task sequence from a plan file: every task MODEL does not hold yet, in
    order, each as add-task would; then the accuracy matrix, written beside MODEL.

    Run it again after a crash or Ctrl-C: it continues where it stopped.
    """
    meta = click.get_current_context().meta
    meta["interrupted"] = f"rerun `packtool run {plan}` to continue where it stopped"
    meta["plan_words"] = True  # errors name the plan's keys, as its progress does
    the_plan = read_plan(plan)  # every value checked before the training stack loads
    dispatch("run", plan=the_plan, model=model, reference=reference, log_dir=log_dir,
             as_json=as_json, quiet=quiet)
