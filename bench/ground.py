"""Grounding figures on the synthetic benchmark: accuracy of tiny grounders trained by
`rvos-ray train-grounder`, overall and per expression kind, with and without the temporal option,
and of their ensemble; and the encoder work of the grounding stage (once per frame / expression).

    .venv/bin/python bench/ground.py [--videos 100] [--valid-videos 40] [--epochs 30]

1. `make-shapes` writes train/ and valid/ (``--videos`` each) under ``--root``.
2. `train-grounder` (Ray Train, 2 CPU workers) trains three variants of configs/tiny.yaml on the
   train split: tiny-r18-t (temporal on), tiny-r18 (the same with temporal off: the paper's
   per-frame grounder) and tiny-r18-t2 (temporal on, another head on the same encoders).
3. The production grounding stage (``GroundStage``, set up and called as an executor does: one stage holding
   the three variants, which share their encoders, as one grounding actor of ``rvos-ray run``
   does) grounds the first ``--valid-videos`` valid videos against their ground-truth object tracklets; accuracy = the chosen tracklet is the referred
   object (argmax of s_p), per variant and for the ensemble of the temporal variants.
The last stdout line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "token")  # read by Ray at import; train-grounder starts Ray
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rvos_ray.config import load_config  # noqa: E402
from rvos_ray.data.refytvos import RefYTVOS  # noqa: E402
from rvos_ray.data.synthetic import make_shapes  # noqa: E402
from rvos_ray.runtime import pipeline as pl  # noqa: E402
from rvos_ray.stages.ground import GroundStage, encoder_groups  # noqa: E402
from rvos_ray.stages.ensemble import ensemble  # noqa: E402
from rvos_ray.training.grounder_data import gt_tracklet_table  # noqa: E402
from rvos_ray.training.train_grounder import main as train_grounder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _accuracy(pred: pa.Table, truth: dict, kinds: dict) -> dict[str, float]:
    hits: dict[str, list[int]] = {}
    got = {(r["video_id"], r["exp_id"]): r["tracklet_id"] for r in pred.to_pylist()}
    for key, objs in truth.items():
        ok = int(got.get(key) in objs)
        for k in ("all", kinds[key]):
            hits.setdefault(k, []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/shapes-ground")
    ap.add_argument("--videos", type=int, default=150, help="videos per split written by make-shapes")
    ap.add_argument("--valid-videos", type=int, default=40, help="valid videos scored")
    ap.add_argument("--epochs", type=int, default=None, help="default: train_grounder.finetune.epochs")
    ap.add_argument("--out", default="runs/grounder-bench")
    ap.add_argument("--config", default=str(REPO / "configs/tiny.yaml"))
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: score the variants already trained under --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}

    t0 = time.time()
    make_shapes(args.root, videos=args.videos, seed=0)
    figures["make_shapes_s"] = round(time.time() - t0, 1)

    # The bench config: tiny.yaml's variants + the same first one without the temporal option.
    base = OmegaConf.to_container(load_config(args.config), resolve=True)
    variants = base["grounding"]["variants"]
    plain = copy.deepcopy(variants[0])
    plain["name"] = variants[0]["name"].removesuffix("-t")
    plain["head"]["temporal"]["enabled"] = False
    variants = [variants[0], plain, *variants[1:]]
    valid_ids = RefYTVOS(args.root, "valid").video_ids()[: args.valid_videos]
    tg = base["train_grounder"]
    tg.update({"out_dir": str(out)})
    tg["finetune"].update({
        "epochs": args.epochs or tg["finetune"]["epochs"],
        "data": [{"kind": "refytvos", "root": args.root, "split": "train"}],
        "val": [{"kind": "refytvos", "root": args.root, "split": "valid", "videos": args.valid_videos}],
    })
    cfg = {"ray": {"num_cpus": 2}, "grounding": {**base["grounding"], "variants": variants},
           "train_grounder": tg}
    cfg_path = out / "config.yaml"
    if not args.eval_only:
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    print(f"== training {len(variants)} variants with train-grounder ({args.videos} train videos, "
          f"{tg['finetune']['epochs']} epochs, {tg['num_workers']} Ray Train workers)")
    if args.eval_only:
        variants = [v for v in variants if (out / v["name"] / "grounder.pt").exists()]
    for v in variants:
        t = time.time()
        if not args.eval_only:
            train_grounder(["--config", str(cfg_path), "--variant", v["name"]])
            figures[f"train_s[{v['name']}]"] = round(time.time() - t, 1)
        hist = json.loads((out / v["name"] / "finetune-metrics.json").read_text())
        figures[f"train_epochs[{v['name']}]"] = len(hist)
        figures[f"train_epoch_s_mean[{v['name']}]"] = round(sum(m["seconds"] for m in hist) / len(hist), 2)
        figures[f"checkpoint_bytes[{v['name']}]"] = (out / v["name"] / "grounder.pt").stat().st_size
        v["checkpoint"] = str(out / v["name"] / "grounder.pt")
    if not args.eval_only:
        import ray

        ray.shutdown()

    print(f"== grounding {len(valid_ids)} valid videos with one stage holding all variants")
    reader = RefYTVOS(args.root, "valid")
    section = {**base["grounding"], "variants": variants}
    [group] = encoder_groups(variants)  # all three share their encoders: one stage
    stage = GroundStage(section, group, seed=int(base["run"]["seed"]))
    stage.setup()
    tables, truth, kinds = [], {}, {}
    n_frames = n_exprs = 0
    t = time.time()
    for vid in valid_ids:
        video = reader.video(vid)
        exprs = reader.expressions(vid)
        tables.append(stage.process(pl.VideoWork(video, tuple(exprs)), gt_tracklet_table(reader, vid))[0])
        n_frames += video.num_frames
        n_exprs += len(exprs)
        for e in exprs:
            truth[(vid, e.exp_id)] = set(e.obj_ids)
            kinds[(vid, e.exp_id)] = e.kind or "none"
    ground_s = time.time() - t
    grounding = pa.concat_tables(tables)
    c = stage.model.counts
    figures.update({
        "valid_videos": len(valid_ids), "valid_frames": n_frames, "valid_expressions": n_exprs,
        "ground_s": round(ground_s, 1), "frames_read": c.frames_read,
        "visual_backbones": len(c.visual_frames), "text_encoders": len(c.text_expressions),
        "visual_frames_per_backbone_max": max(c.visual_frames.values()),
        "text_expressions_per_encoder_max": max(c.text_expressions.values()),
        "visual_calls_total": sum(c.visual_calls.values()),
    })
    print(f"frames {n_frames}, expressions {n_exprs}, variants {len(variants)}")
    print(f"frames read: {c.frames_read}; per visual backbone: {dict(c.visual_frames)} "
          f"({sum(c.visual_calls.values())} batched calls)")
    print(f"expressions per text encoder: {dict(c.text_expressions)}")
    print(f"(without sharing: {len(variants) * n_frames} backbone frames and "
          f"{len(variants) * n_exprs} text encodings; without per-video reuse: "
          f"{len(variants) * n_frames * n_exprs // max(len(valid_ids), 1)} frames, roughly)")

    print("== accuracy (chosen tracklet is the referred object)")
    rows = [(v["name"], [v["name"]]) for v in variants]
    temporal = [v["name"] for v in variants if v["head"]["temporal"]["enabled"]]
    rows.append(("ensemble(" + "+".join(temporal) + ")", temporal))
    rows.append(("ensemble(all)", [v["name"] for v in variants]))
    for label, members in rows:
        acc = _accuracy(ensemble(grounding, variants=members), truth, kinds)
        print(f"{label:<40} " + "  ".join(f"{k} {v:.4f}" for k, v in acc.items()))
        for k, v in acc.items():
            figures[f"acc_{k}[{label}]"] = round(v, 4)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
