"""The demo's committed models: the frozen visual stem of its grounders, packaging, and the manifest.

``make demo-models`` trains the three demo models with the project's own commands
(``finetune-segmenter``, ``train-propagator``, ``train-grounder``, configs in
``configs/demo_models/``) and then calls this module::

    python -m rvos_ray.demo_models visual-init --out runs/demo-models/visual_resnet18.pt
    python -m rvos_ray.demo_models package --runs runs/demo-models --out rvos_ray/assets/demo

``visual-init`` writes the grounders' visual backbone: timm's ``resnet18`` initialised from a
fixed seed, cut to the stages the grounders read (``--out-index``). No pretrained ImageNet weights
can be fetched here, so the grounders use a frozen *random* convolutional stem (random conv features
keep colour and texture, which is what the synthetic expressions need besides the mask geometry of
the temporal option); its weights are a file rather than a seed so that every process (trainer,
Ray actors, a user's machine) builds exactly the same features.

``package`` copies the trained checkpoints into the package-data folder (float32 tensors stored as
float16, half the size; loaders cast them back) and writes ``MANIFEST.json``: for every file the
command, config, seed, its sha256 and that of the trained file it was made from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

#: the package-data folder the demo loads its models from
ASSETS = Path(__file__).resolve().parent / "assets" / "demo"

#: what ``package`` copies: asset name -> (file under --runs, command, config, seed)
PRODUCTS: dict[str, dict[str, Any]] = {
    "segmenter.pth": {
        "source": "segmenter/segmenter.pth",
        # two legs: 600 iterations from random init, then 3000 more from those weights
        "command": "rvos-ray finetune-segmenter --config configs/demo_models/condinst_demo.py "
                   "--data-root data/demo-train --work-dir runs/demo-models/segmenter-600 --max-iters 600 "
                   "--seed 0 --threads 1 --num-workers 0 && "
                   "rvos-ray finetune-segmenter --config configs/demo_models/condinst_demo.py "
                   "--data-root data/demo-train --work-dir runs/demo-models/segmenter --max-iters 3000 "
                   "--seed 1 --threads 1 --num-workers 0 --load-from runs/demo-models/segmenter-600/segmenter.pth",
        "config": "configs/demo_models/condinst_demo.py",
        "seed": 0,
    },
    "segmenter_config.py": {
        "source": "segmenter/segmenter_config.py",
        "command": "(written by the finetune-segmenter run above: the inference config of segmenter.pth)",
        "config": "configs/demo_models/condinst_demo.py",
        "seed": 0,
    },
    "propagator.pt": {
        "source": "propagator/model.pt",
        # one run in four legs, each resuming the last (steps=N: the leg's cosine horizon)
        "command": " && ".join(f"rvos-ray train-propagator --config configs/demo_models/cfbi_demo.yaml steps={n}"
                               for n in (260, 1000, 2000, 2500)),
        "config": "configs/demo_models/cfbi_demo.yaml",
        "seed": 0,
    },
    "visual_resnet18.pt": {
        "source": "visual_resnet18.pt",
        "command": "python -m rvos_ray.demo_models visual-init --out runs/demo-models/visual_resnet18.pt "
                   "--model resnet18 --out-index 2 --seed 0",
        "config": "(none: timm resnet18 at a fixed seed, stages 0-2)",
        "seed": 0,
    },
}
GROUNDER_COMMAND = "rvos-ray train-grounder --config configs/demo_models/grounders.yaml --variant {name}"
GROUNDER_CONFIG = "configs/demo_models/grounders.yaml"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def visual_init(out: str, model: str = "resnet18", out_index: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write the seeded random-init weights of ``model``'s stages up to ``out_index`` (the
    tensors a ``features_only`` backbone with that out index uses), keyed as the full model."""
    import timm
    import torch

    torch.manual_seed(seed)
    full = timm.create_model(model, pretrained=False)
    used = timm.create_model(model, pretrained=False, features_only=True, out_indices=(out_index,))
    keep = set(used.state_dict())
    state = {k: v.detach().clone().contiguous() for k, v in full.state_dict().items() if k in keep}
    missing = sorted(keep - set(state))
    if missing:
        raise RuntimeError(f"{model}: features_only keys not in the full model: {missing[:5]}")
    tmp = f"{out}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, out)
    return {"out": out, "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values()))}


def package(runs: str, out: str, grounders: list[str], keep_shipped: bool = False) -> dict[str, Any]:
    """Copy the trained files under ``runs`` into ``out`` and write ``out/MANIFEST.json``.
    ``grounders``: variant names, ``name:seed`` for a variant trained with
    ``train_grounder.seed=seed``. ``keep_shipped``: a file not under ``runs`` keeps the copy and
    manifest entry already in ``out`` (to add models without retraining the others)."""
    runs_p, out_p = Path(runs), Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    old = json.loads((out_p / "MANIFEST.json").read_text())["files"] if keep_shipped else {}
    products = {k: dict(v) for k, v in PRODUCTS.items()}
    for spec in grounders:
        name, _, seed = spec.partition(":")
        products[f"grounder_{name}.pt"] = {
            "source": f"grounders/{name}/grounder.pt",
            "command": GROUNDER_COMMAND.format(name=name) + (f" train_grounder.seed={seed}" if seed else ""),
            "config": GROUNDER_CONFIG,
            "seed": int(seed or 0),
        }
    entries = {}
    for asset, info in products.items():
        src = runs_p / info["source"]
        if not src.is_file() and asset in old and (out_p / asset).is_file():
            entries[asset] = old[asset]
            continue
        if not src.is_file():
            raise FileNotFoundError(f"{src}: missing; run `make demo-models` (it trains every demo model)")
        dst = out_p / asset
        if asset.endswith(".py"):
            # The inference config mmdet writes carries the training run's absolute paths
            # (work_dir, annotation file); keep them out of the shipped copy.
            dst.write_text(_strip_paths(src.read_text(), str(runs_p.resolve())))
        else:
            half_copy(src, dst)
        entries[asset] = {"command": info["command"], "config": info["config"], "seed": info["seed"],
                          "bytes": dst.stat().st_size, "sha256": sha256(dst),
                          "trained_sha256": sha256(src)}
    manifest = {"description": "the demo's models, trained on synthetic shapes train splits (rvos-ray make-shapes "
                               "--out data/demo-train --videos 40 --seed 0; the grounders also on --out "
                               "data/demo-ground --videos 200 --seed 2) by `make demo-models`",
                "files": entries}
    tmp = out_p / "MANIFEST.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out_p / "MANIFEST.json")
    return manifest


def _half(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.dtype == torch.float32 else obj
    if isinstance(obj, dict):
        return {k: _half(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_half(v) for v in obj)
    return obj


def half_copy(src: Path, dst: Path) -> None:
    """``src`` (a torch checkpoint) with every float32 tensor stored as float16: half the bytes in
    the package. Every loader copies the values into the model's float32 parameters
    (``load_state_dict``), so inference runs in float32 as trained."""
    import torch

    state = torch.load(src, map_location="cpu", weights_only=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(_half(state), tmp)
    os.replace(tmp, dst)


def _strip_paths(text: str, root: str) -> str:
    return text.replace(root + "/", "runs/demo-models/").replace(os.getcwd() + "/", "")


def verify(folder: str | Path = ASSETS) -> dict[str, Any]:
    """The manifest of ``folder`` with every file's sha256 checked (ValueError on a mismatch)."""
    folder = Path(folder)
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    for name, info in manifest["files"].items():
        got = sha256(folder / name)
        if got != info["sha256"]:
            raise ValueError(f"{folder / name}: sha256 {got} does not match MANIFEST.json ({info['sha256']})")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rvos_ray.demo_models", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("visual-init", help="write the grounders' frozen visual backbone (seeded init)")
    v.add_argument("--out", required=True)
    v.add_argument("--model", default="resnet18")
    v.add_argument("--out-index", type=int, default=2)
    v.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("package", help="copy trained checkpoints into the assets folder + MANIFEST.json")
    k.add_argument("--runs", default="runs/demo-models")
    k.add_argument("--out", default=str(ASSETS))
    k.add_argument("--grounders", nargs="+", required=True,
                   help="grounder variant names (name:seed for one trained with train_grounder.seed=seed)")
    k.add_argument("--keep-shipped", action="store_true",
                   help="keep the shipped copy of a model not found under --runs (add models without retraining)")
    sub.add_parser("verify", help="check the committed assets against MANIFEST.json")
    a = p.parse_args(argv)
    if a.cmd == "visual-init":
        print(json.dumps(visual_init(a.out, a.model, a.out_index, a.seed)))
    elif a.cmd == "package":
        m = package(a.runs, a.out, a.grounders, a.keep_shipped)
        for name, info in m["files"].items():
            print(f"{name:28s} {info['bytes']:>10d} B  sha256 {info['sha256'][:16]}")
    else:
        m = verify()
        print(f"{len(m['files'])} files match {ASSETS / 'MANIFEST.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
