"""Sweeps over a run's cache: the space, cache trials (exact reproduction, no model), NMS
trials and the grounding cache, the Ray Tune CLI and its outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from _sweep_support import REPO, VARIANTS, build_run, make_data, run_config
from rvos_ray.config import load_config
from rvos_ray.registry import PROPAGATORS, ConfigError
from rvos_ray.runtime.run_dir import RunDir
from rvos_ray.sweep.cache import NO_PREDICTION, load_cache
from rvos_ray.sweep.guard import ModelCallError, forbid_models
from rvos_ray.sweep.space import build_space, load_sweep_config
from rvos_ray.sweep.trial import TrialSettings, cache_trial, kept_by_nms, run_trial

SWEEP = REPO / "configs" / "sweeps" / "ensemble.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("sweep") / "run"
    summary = build_run(data, run)
    return run, summary


@pytest.fixture(scope="module")
def cache(run):
    return load_cache(str(run[0]), need_tracklets_all=True)


def sweep_cfg(tmp_path, text: str):
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return load_sweep_config(p)


# ---- the space ---------------------------------------------------------------------------------


def test_model_axes_are_refused_unless_full_pipeline_is_allowed(tmp_path, data):
    run_cfg = run_config(data, tmp_path / "r")
    sc = sweep_cfg(tmp_path, "space:\n  keyframes.k: {grid: [3, 7]}\n  ensemble.temperature: {grid: [1.0, 2.0]}\n")
    with pytest.raises(ConfigError, match=r"keyframes\.k.*re-run the models.*allow_full_pipeline: true"):
        build_space(sc, run_cfg, VARIANTS)
    ckpt = sweep_cfg(tmp_path, "space:\n  propagation.options.checkpoint: {grid: [a.pt, b.pt]}\n")
    with pytest.raises(ConfigError, match="propagation.*re-run the models"):
        build_space(ckpt, run_cfg, VARIANTS)
    allowed = OmegaConf.merge(sc, {"allow_full_pipeline": True})
    space = build_space(allowed, run_cfg, VARIANTS)
    assert space.full_pipeline and space.grid_size() == 4
    # the shipped sweep of propagation work avoided: full-pipeline axes, null = off
    work = build_space(load_sweep_config(REPO / "configs" / "sweeps" / "propagation_work.yaml"), run_cfg, VARIANTS)
    assert work.full_pipeline and {a.key for a in work.axes} == {
        "propagation.avoid.duplicate_iou", "propagation.avoid.covered_iou", "propagation.avoid.feature_cache_frames"}
    assert work.grid_size() == 8


def test_space_parsing_and_errors(tmp_path, data):
    run_cfg = run_config(data, tmp_path / "r")
    sc = sweep_cfg(tmp_path, "space:\n  ensemble.variants: {subsets: all}\n"
                             "  ensemble.weights: {per_variant: {uniform: [0.0, 1.0]}}\n  nms.max_tracklets: 5\n")
    space = build_space(sc, run_cfg, VARIANTS)
    subsets = next(a for a in space.axes if a.key == "ensemble.variants").args
    assert len(subsets) == 2 ** len(VARIANTS) - 1 and ["bad", "good", "noisy"] in subsets
    assert sorted(k for k in space.keys if k.startswith("ensemble.weights.")) == [
        f"ensemble.weights.{v}" for v in sorted(VARIANTS)]
    assert space.sweeps_nms and space.grid_size() == 7
    assert space.smoke().grid_size() == 2 and space.smoke().axes[0].args == tuple(subsets[:2])
    for text, match in [
        ("space:\n  ensemble.variants: {grid: [[good, other]]}\n", "not a non-empty subset"),
        ("space:\n  ensemble.weights.other: 1.0\n", "no variant 'other'"),
        ("space:\n  ensemble.momentum: {grid: [1]}\n", "not a sweep axis"),
        ("space:\n  data.split: {grid: [train]}\n", "not a sweep axis"),
        ("space:\n  ensemble.mode: {grid: [median]}\n", "median"),
        ("space:\n  ensemble.temperature: {uniform: [2.0, 1.0]}\n", "lower bound"),
        ("space:\n  ensemble.temperature: {normal: [0, 1]}\n", "a domain is one of"),
        ("space: {}\n", "space is empty"),
        ("search: {algorithm: optuna}\nspace:\n  ensemble.temperature: {grid: [1.0]}\n", "instead of grid"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_space(sweep_cfg(tmp_path, text), run_cfg, VARIANTS)


# ---- cache trials -------------------------------------------------------------------------------


def test_default_settings_reproduce_the_runs_jf_exactly(run, cache):
    _, summary = run
    assert 0.0 < summary["J&F"] < 1.0
    result = cache_trial(cache, {})
    assert result["status"] == "ok" and result["grounding_exact"] and result["missing_tracklets"] == 0
    # exact equality, not approximate: same masks, same scorer, same aggregation order
    assert result["J&F"] == summary["J&F"] and result["J"] == summary["J"] and result["F"] == summary["F"]
    assert cache.run_scores["J&F"] == summary["J&F"]
    # the run's own predictions are what the default ensemble picks again
    assert cache.prediction.num_rows > 0


def test_trial_scores_match_hand_lookup(cache):
    """``good`` alone picks each expression's own object; its J&F is the mean of those pairs."""
    from rvos_ray.data.datasets import open_dataset

    r = cache_trial(cache, {"ensemble.variants": ["good"]})
    reader = open_dataset(cache.cfg["data"]["root"], "valid", "refytvos")
    expected = []
    for w in cache.works:
        from _sweep_support import gt_tracklets

        _, obj_to_tid = gt_tracklets(reader, w)
        for e in w.expressions:
            j, f, _ = cache.pairs[(w.video_id, e.exp_id, obj_to_tid[e.obj_ids[0]])]
            expected.append((j + f) / 2)
    assert r["J&F"] == pytest.approx(float(np.mean(expected)), abs=1e-12)
    bad = cache_trial(cache, {"ensemble.variants": ["bad"]})
    assert bad["J&F"] < r["J&F"]
    # no prediction at all scores every expression as an empty mask
    assert all((w.video_id, e.exp_id, NO_PREDICTION) in cache.pairs for w in cache.works for e in w.expressions)


def test_ensemble_axes_change_results_deterministically(cache):
    a = cache_trial(cache, {"ensemble.mode": "logmean", "ensemble.temperature": 0.5, "ensemble.frame_stride": 2})
    b = cache_trial(cache, {"ensemble.mode": "logmean", "ensemble.temperature": 0.5, "ensemble.frame_stride": 2})
    assert a["J&F"] == b["J&F"] and a["status"] == "ok"
    w = cache_trial(cache, {"ensemble.weights.good": 1.0, "ensemble.weights.noisy": 0.0, "ensemble.weights.bad": 0.0})
    assert w["J&F"] == cache_trial(cache, {"ensemble.variants": ["good"]})["J&F"]


def test_a_trial_never_calls_a_model(cache):
    import torch

    torch.set_num_threads(1)
    layer = torch.nn.Linear(2, 2)
    with forbid_models() as guard:
        with pytest.raises(ModelCallError):
            PROPAGATORS.build("none", {}, "propagation.options")
        with pytest.raises(ModelCallError):
            layer(torch.zeros(1, 2))
    assert len(guard.refused) == 2
    layer(torch.zeros(1, 2))  # restored after the block
    assert PROPAGATORS.get("none").__name__ == "KeyframeOnlyPropagator"
    result = cache_trial(cache, {"ensemble.variants": ["good", "noisy"], "nms.max_tracklets": 2})
    assert result["model_calls"] == 0 and result["status"] == "ok"


# ---- NMS trials and the grounding cache ---------------------------------------------------------


def test_nms_rerun_on_tracklets_all_gives_the_runs_kept_set(cache):
    iou, p, min_score = TrialSettings.of_run(cache.cfg).nms
    again = kept_by_nms(cache, (iou + 1e-9, p, min_score))  # forces a real NMS
    assert again == cache.kept
    # the duplicates (shifted copies) were suppressed: one tracklet per object + the distractor
    rd = RunDir(cache.run_uri)
    for w in cache.works:
        n_all = len(set(rd.read_table(w.video_id, "tracklets_all").column("tracklet_id").to_pylist()))
        assert len(cache.kept[w.video_id]) == (n_all - 1) // 2 + 1


def test_smaller_p_is_answered_from_the_cache_renormalised(cache):
    r = cache_trial(cache, {"nms.max_tracklets": 1})
    assert r["status"] == "ok" and r["missing_tracklets"] == 0 and not r["grounding_exact"]
    assert r["kept_tracklets"] == len(cache.works)
    # one tracklet per video: every expression picks it, whatever the ensemble says
    assert r["J&F"] == cache_trial(cache, {"nms.max_tracklets": 1, "ensemble.variants": ["bad"]})["J&F"]


def test_tracklets_the_run_never_grounded_are_dropped_or_refused(cache):
    keep_dups = {"nms.iou_threshold": 1.0}  # nothing suppressed: the duplicates come back
    dropped = cache_trial(cache, keep_dups, "drop")
    assert dropped["status"] == "ok" and dropped["missing_tracklets"] > 0
    assert not dropped["grounding_exact"] and not math.isnan(dropped["J&F"])
    refused = cache_trial(cache, keep_dups, "refuse")
    assert refused["status"] == "refused" and math.isnan(refused["J&F"])


# ---- the CLI on Ray Tune ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (127.0.0.1, 2 CPUs) for the CLI tests; the CLI uses it and leaves it up."""
    import ray

    from rvos_ray.runtime import sweep_exec
    from rvos_ray.sweep.space import SweepConfig

    assert sweep_exec.init_sweep_ray(OmegaConf.structured(SweepConfig), None, 2)

    yield
    ray.shutdown()


@pytest.mark.ray
def test_sweep_cli_smoke_writes_leaderboard_and_best_config(run, local_ray, capsys):
    from rvos_ray.sweep import sweep_cli

    run_dir, summary = run
    assert sweep_cli.main(["--run", str(run_dir), "--config", str(SWEEP), "--smoke-test",
                           "search.max_concurrent_trials=2"]) == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["reproduces_run"] is True and last["baseline_J&F"] == summary["J&F"]
    # smoke grid: variants (2 subsets) x mode (2), the other axes at their first value
    assert last["trials"] == 4 and last["failed_trials"] == 0 and last["trials_per_s"] > 0
    sweep_dir = run_dir / "sweeps" / "ensemble"
    lb = pq.read_table(sweep_dir / "leaderboard.parquet").to_pandas()
    assert len(lb) == 5 and (sweep_dir / "leaderboard.csv").read_text().count("\n") == 6
    assert {"J", "F", "J&F", "time_s", "ensemble.variants", "nms.max_tracklets"} <= set(lb.columns)
    assert list(lb["J&F"]) == sorted(lb["J&F"], reverse=True)
    # the first grid point is the run's own settings: inside Tune too it reproduces the run exactly
    same = lb[(lb["ensemble.variants"] == "bad+good+noisy") & (lb["ensemble.mode"] == "mean")]
    assert len(same) == 1 and same["J&F"].item() == summary["J&F"] and same["grounding_exact"].item()
    cache_rows = lb[lb["kind"] == "cache"]
    assert (cache_rows["model_calls"] == 0).all() and not cache_rows["torch_loaded"].any()
    assert lb.loc[lb["kind"] == "baseline", "J&F"].item() == summary["J&F"]
    best = load_config(sweep_dir / "best.yaml")  # a config `rvos-ray run` accepts
    assert best.run.dir.endswith("best_run")
    assert lb["J&F"].iloc[0] >= summary["J&F"]


@pytest.mark.ray
def test_sweep_with_a_searcher_writes_the_best_settings_as_a_run_config(run, local_ray, capsys):
    from rvos_ray.sweep import sweep_cli

    run_dir, summary = run
    cfg = REPO / "configs" / "sweeps" / "ensemble_weights.yaml"
    assert sweep_cli.main(["--run", str(run_dir), "--config", str(cfg), "--smoke-test", "search.algorithm=optuna",
                           "name=optuna"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["trials"] == 2 and last["failed_trials"] == 0 and last["reproduces_run"] is True
    lb = pq.read_table(run_dir / "sweeps" / "optuna" / "leaderboard.parquet").to_pandas()
    trials = lb[lb["kind"] == "cache"]
    weights = [f"ensemble.weights.{v}" for v in sorted(VARIANTS)]
    assert set(weights) <= set(lb.columns) and trials[weights].notna().all().all()
    assert ((trials[weights] >= 0) & (trials[weights] <= 1)).all().all()
    best_row = lb.iloc[0]
    best = load_config(run_dir / "sweeps" / "optuna" / "best.yaml")
    if best_row["kind"] == "cache":
        assert {k: pytest.approx(v) for k, v in best.ensemble.weights.items()} == {
            v: best_row[f"ensemble.weights.{v}"] for v in VARIANTS}
        assert best.ensemble.mode == best_row["ensemble.mode"]
    else:
        assert dict(best.ensemble.weights) == {} and best.ensemble.temperature == 1.0


def test_pair_metrics_are_reused_and_refreshed_when_a_video_is_redone(run, cache):
    import pyarrow as pa

    from rvos_ray.sweep.cache import PAIR_FILE, PAIR_SCHEMA

    run_dir, summary = run
    path = run_dir / PAIR_FILE
    again = load_cache(str(run_dir))
    assert again.timings["pair_videos_computed"] == 0 and again.pairs == cache.pairs
    # a stale copy (as if the first video had been finished at another time) is recomputed
    t = pq.read_table(path)
    vid = cache.works[0].video_id
    stamp = [x + 1.0 if v == vid else x for v, x in zip(t.column("video").to_pylist(), t.column("finished_at").to_pylist())]
    j = [0.0 if v == vid else x for v, x in zip(t.column("video").to_pylist(), t.column("J").to_pylist())]
    t = t.set_column(t.schema.get_field_index("finished_at"), "finished_at", pa.array(stamp, pa.float64()))
    pq.write_table(t.set_column(t.schema.get_field_index("J"), "J", pa.array(j, pa.float64())).cast(PAIR_SCHEMA), path)
    fixed = load_cache(str(run_dir))
    assert fixed.timings["pair_videos_computed"] == 1 and fixed.pairs == cache.pairs
    assert cache_trial(fixed, {})["J&F"] == summary["J&F"]
