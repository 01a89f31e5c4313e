"""``rvos-ray ablate --config configs/ablation/table3.yaml [--base CFG] [--out DIR] [--smoke-test] [key=value ...]``.

Runs every row of an ablation config (see :mod:`rvos_ray.sweep.ablation`) as a whole split and
writes the table in the paper's format (Model | J&F | J | F) as Markdown and CSV under the
output directory; prints it, then one JSON line with every row's figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rvos_ray.runtime import ray_session
from rvos_ray.sweep.ablation import load_ablation_config, run_ablation, table_markdown, write_tables

SMOKE_OVERRIDES = ["data.videos=1", "run.submission_zip=false"]


def build_parser(prog: str = "rvos-ray ablate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="ablation YAML, e.g. configs/ablation/table3.yaml")
    p.add_argument("--base", default=None, help="pipeline config the rows start from (default: the ablation's base)")
    p.add_argument("--out", default=None, help="output directory (default: the ablation's out)")
    p.add_argument("--executor", choices=("local", "ray"), default=None, help="default: the ablation's executor")
    p.add_argument("--address", default=None, help="an existing Ray cluster (executor ray)")
    p.add_argument("--smoke-test", action="store_true", help="one video per row (data.videos=1), no zip")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config, every row")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    acfg = load_ablation_config(args.config)
    if args.base:
        acfg.base = args.base
    if args.executor:
        acfg.executor = args.executor
    if acfg.executor == "ray":
        ray_session.prepare(ray_session.target_address(args.address))  # before Ray is imported
    overrides = list(args.overrides) + (SMOKE_OVERRIDES if args.smoke_test else [])
    rows = run_ablation(acfg, overrides, out=args.out, address=args.address)
    out = args.out or str(acfg.out)
    md, csv_, _ = write_tables(out, str(acfg.title), rows)
    print(table_markdown(str(acfg.title), rows), end="")
    print(f"table: {md} (+ {csv_})")
    print(json.dumps({r["name"]: {"J&F": r["J&F"], "J": r["J"], "F": r["F"]} for r in rows}))
    return 0
