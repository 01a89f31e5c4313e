"""`rvos-ray <command> ...`: one entry point, each command implemented in its own module.

A command module exposes ``main(argv: list[str]) -> int`` and builds its own argparse parser,
so ``rvos-ray <command> --help`` documents it and importing the CLI stays cheap (torch, ray
and mmdet are imported only by the commands that need them).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

# command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-shapes": ("rvos_ray.data.synthetic", "write the synthetic benchmark (Ref-YouTube-VOS layout)"),
    "score": ("rvos_ray.evaluation.score_cli", "score a submission folder or zip: J, F, J&F per expression"),
    "train-grounder": ("rvos_ray.training.train_grounder", "train a grounder variant with Ray Train (RefCOCO pretrain, Ref-YouTube-VOS finetune)"),
    "train-propagator": ("rvos_ray.training.train_propagator", "train the CFBI+ propagator (clips, hard-pixel CE, checkpoints, resume)"),
    "sweep": ("rvos_ray.sweep.sweep_cli", "Ray Tune sweep of ensemble / tracklet-NMS settings over a run's cache"),
    "ablate": ("rvos_ray.sweep.ablate_cli", "run the paper's ablation rows (Table 3) and write the table"),
    "to-coco": ("rvos_ray.data.coco_convert", "convert a Ref-YouTube-VOS-layout split to COCO instances JSON"),
    "finetune-segmenter": ("rvos_ray.training.finetune_segmenter", "finetune an mmdet segmenter (CondInst) on a split"),
    "run": ("rvos_ray.runtime.run_cli", "run a whole split (local Ray, a cluster, or in-process); resumes"),
    "report": ("rvos_ray.telemetry.report_cli", "write a run's self-contained HTML report (throughput, latency, scores)"),
    "demo": ("rvos_ray.demo", "the whole pipeline on local Ray with the shipped small models: J&F, throughput, report"),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, exit code 2."""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rvos-ray <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "rvos-ray <command> --help for a command's options; --debug (anywhere) shows the",
              "traceback of an input, config or placement error instead of one line."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RVOS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rvos-ray: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return guarded(f"rvos-ray {command}", lambda: importlib.import_module(COMMANDS[command][0]).main(rest), debug)


def guarded(prog: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command's ``main``: an input, config or placement error is printed as one clear
    message (``prog: error: ...``) with exit code 2; ``debug`` (``--debug``, ``RVOS_DEBUG=1``)
    lets it raise with its traceback instead. Any other exception keeps its traceback."""
    try:
        return int(fn() or 0)
    except Exception as e:
        if debug or not _is_input_error(e):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        print(f"{prog}: (run again with --debug for the traceback)", file=sys.stderr)
        return 2


def job_main(prog: str, main_fn: Callable[[list[str]], int | None]) -> int:
    """A ``jobs/*.py`` entry point: ``main_fn(argv)`` under :func:`guarded`, ``--debug`` taken
    out of the arguments as ``rvos-ray`` does."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("RVOS_DEBUG", "") not in ("", "0")
    rest = [a for a in argv if a != "--debug"]
    return guarded(prog, lambda: main_fn(rest), debug)


def _is_input_error(e: BaseException) -> bool:
    from rvos_ray.data.errors import DataError
    from rvos_ray.registry import ConfigError, RegistryError
    from rvos_ray.runtime.placement import PlacementError
    from rvos_ray.runtime.ray_session import RaySessionError
    from rvos_ray.types import SchemaError

    return isinstance(e, (UserError, DataError, ConfigError, RegistryError, SchemaError, FileNotFoundError,
                          PlacementError, RaySessionError))


if __name__ == "__main__":
    sys.exit(main())
