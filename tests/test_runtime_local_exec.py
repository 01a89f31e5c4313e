"""The in-process executor over the tiny config: every output of a run, resume, failures.

The models are built once for the module; each run has its own run directory."""

import json
import zipfile

import pyarrow.parquet as pq
import pytest

from _runtime_support import VIDEOS, assert_same_results, copy_data, corrupt_video, make_data, tiny_cfg
from rvos_ray.data.errors import DataError
from rvos_ray.registry import ConfigError
from rvos_ray.runtime.local_exec import LocalStages, run_local
from rvos_ray.runtime.pipeline import STAGES
from rvos_ray.runtime.run_dir import RunDir

pytestmark = pytest.mark.slow  # builds the tiny models (mmdet, CFBI+, grounders) and runs them


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def stages(data, tmp_path_factory):
    """The tiny models, built once for every run of the module."""
    return LocalStages(tiny_cfg(data, tmp_path_factory.mktemp("models") / "run"))


@pytest.fixture(scope="module")
def clean_run(data, stages, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    summary = run_local(tiny_cfg(data, run), progress=False, stages=stages)
    return run, summary


def test_a_run_writes_every_output(clean_run):
    run, s = clean_run
    assert (s["videos"], s["done"], s["skipped"], s["failed"]) == (VIDEOS, VIDEOS, 0, 0)
    assert json.loads((run / "summary.json").read_text())["done"] == VIDEOS
    assert (run / "config.yaml").is_file()
    rd = RunDir(str(run))
    vids = sorted(rd.done_videos())
    assert len(vids) == VIDEOS
    preds = pq.read_table(run / "predictions.parquet")
    metrics = pq.read_table(run / "metrics.parquet")
    # one prediction and one metrics row per expression with tracklets; every expression scored
    assert metrics.num_rows == s["scored_expressions"] > 0
    assert preds.num_rows <= metrics.num_rows
    assert 0.0 <= s["J&F"] <= 1.0
    # submission: one PNG per expression and frame of every video, Annotations/ at the zip root
    with zipfile.ZipFile(run / "submission.zip") as zf:
        names = zf.namelist()
    pngs = sum(rd.done_record(v)["pngs"] for v in vids)
    assert len(names) == pngs > 0 and all(n.startswith("Annotations/") for n in names)
    # every stage logged start/end for every video
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    for v in vids:
        seen = {e["stage"] for e in events if e.get("video_id") == v and "end" in e}
        assert seen == set(STAGES), (v, seen)
        assert all(e["end"] >= e["start"] for e in events if "end" in e)
    # the NMS keeps at most P tracklets of the propagated ones
    for v in vids:
        rec = rd.done_record(v)
        assert 0 < rec["kept"] <= min(rec["tracklets"], 10)


def test_each_shared_encoder_runs_once_per_frame_and_per_expression(clean_run, data):
    """tiny.yaml's two variants share one visual and one text encoder (one grounding stage holds
    both): the split's frames went through the visual encoder once, its expressions through the
    text encoder once."""
    from rvos_ray.data.datasets import open_dataset

    run, s = clean_run
    reader = open_dataset(str(data), "valid", "refytvos")
    ids = reader.video_ids()
    frames = sum(reader.video(v).num_frames for v in ids)
    expressions = sum(len(reader.expressions(v)) for v in ids)
    passes = json.loads((run / "summary.json").read_text())["encoder_passes"]
    assert list(passes["visual"].values()) == [frames]
    assert list(passes["text"].values()) == [expressions]
    assert s["encoder_passes"] == passes


def test_rerun_skips_finished_videos_with_identical_results(clean_run, data, stages, tmp_path):
    run, _ = clean_run
    again = copy_data(run, tmp_path / "again")
    s = run_local(tiny_cfg(data, again), progress=False)
    assert (s["done"], s["skipped"], s["failed"]) == (0, VIDEOS, 0)
    assert_same_results(run, again)

    # an interrupted video (no done.json) is redone, the others skipped
    rd = RunDir(str(again))
    victim = sorted(rd.done_videos())[1]
    (again / "videos" / victim / "done.json").unlink()
    s = run_local(tiny_cfg(data, again), progress=False, stages=stages)
    assert (s["done"], s["skipped"]) == (1, VIDEOS - 1)
    assert_same_results(run, again)


def test_resume_with_other_settings_is_refused(clean_run, data, tmp_path):
    run, _ = clean_run
    again = copy_data(run, tmp_path / "again")
    with pytest.raises(ConfigError, match="nms.iou_threshold"):
        run_local(tiny_cfg(data, again, "nms.iou_threshold=0.9"), progress=False)


def test_unreadable_frames_give_a_failure_record_and_the_rest_is_scored(clean_run, data, stages, tmp_path):
    bad = copy_data(data, tmp_path / "bad")
    vid = corrupt_video(bad)
    run = tmp_path / "run"
    s = run_local(tiny_cfg(bad, run), progress=False, stages=stages)
    assert (s["done"], s["failed"]) == (VIDEOS - 1, 1)
    [f] = s["failures"]
    assert f["video_id"] == vid and f["stage"] == "segmentation" and f["error"] == "DataError"
    assert "cannot read frame" in f["message"]
    failures = pq.read_table(run / "failures.parquet").to_pylist()
    assert [r["video_id"] for r in failures] == [vid]
    # the record keeps where it was raised: the traceback down to the frame reader
    record = json.loads((run / "failures" / f"{vid}.json").read_text())
    for tb in (record["traceback"], failures[0]["traceback"]):
        assert "Traceback" in tb and "read_image" in tb and "DataError" in tb
    # the driver's event names the failed stage without passing the event off as that stage's
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    [ev] = [e for e in events if e["item"] == "video_failed"]
    assert (ev["stage"], ev["failed_stage"], ev["video_id"]) == ("driver", "segmentation", vid)
    metrics = pq.read_table(run / "metrics.parquet")
    assert set(metrics.column("video").to_pylist()) == set(RunDir(str(run)).done_videos())
    assert vid not in set(metrics.column("video").to_pylist())
    # the other videos' results are those of the clean run
    ref = pq.read_table(clean_run[0] / "metrics.parquet")
    keep = [i for i, v in enumerate(ref.column("video").to_pylist()) if v != vid]
    assert ref.take(keep).equals(metrics)


def test_a_missing_frame_fails_its_video_and_the_rest_of_the_split_runs(clean_run, data, stages, tmp_path):
    """A frame listed in meta_expressions without its JPEG: that video gets a failure record
    naming the file (stage 'input'); the others run; --strict (data.strict) refuses up front."""
    bad = copy_data(data, tmp_path / "bad")
    folder = sorted((bad / "valid" / "JPEGImages").iterdir())[1]
    missing = sorted(folder.iterdir())[2]
    missing.unlink()
    run = tmp_path / "run"
    s = run_local(tiny_cfg(bad, run), progress=False, stages=stages)
    assert (s["videos"], s["done"], s["failed"], s["invalid"]) == (VIDEOS, VIDEOS - 1, 1, 1)
    [f] = s["failures"]
    assert (f["video_id"], f["stage"], f["error"]) == (folder.name, "input", "DataError")
    assert missing.name in f["message"] and str(folder) in f["message"]
    assert json.loads((run / "failures" / f"{folder.name}.json").read_text())["stage"] == "input"
    assert pq.read_table(run / "failures.parquet").column("video_id").to_pylist() == [folder.name]
    with pytest.raises(DataError, match=missing.name):
        run_local(tiny_cfg(bad, tmp_path / "strict", "data.strict=true"), progress=False, stages=stages)


def test_a_video_without_ground_truth_in_an_annotated_split_fails_naming_the_folder(data, stages, tmp_path):
    """Its expressions name objects, its Annotations/<vid>/ is gone: not silently unscored."""
    import shutil

    bad = copy_data(data, tmp_path / "bad")
    folder = sorted((bad / "valid" / "Annotations").iterdir())[0]
    shutil.rmtree(folder)
    s = run_local(tiny_cfg(bad, tmp_path / "run"), progress=False, stages=stages)
    assert (s["done"], s["failed"]) == (VIDEOS - 1, 1)
    [f] = s["failures"]
    assert (f["video_id"], f["stage"], f["error"]) == (folder.name, "writer", "DataError")
    assert str(folder) in f["message"] and "no ground truth" in f["message"]


def test_a_redo_forgets_the_old_done_markers(clean_run, data, stages, tmp_path):
    """run.resume=false: a video that fails in the redo is not skipped later as done."""
    run = copy_data(clean_run[0], tmp_path / "run")
    bad = copy_data(data, tmp_path / "bad")
    vid = corrupt_video(bad)
    s = run_local(tiny_cfg(bad, run, "run.resume=false"), progress=False, stages=stages)
    assert (s["done"], s["failed"], s["skipped"]) == (VIDEOS - 1, 1, 0)
    assert vid not in RunDir(str(run)).done_videos()
    # resuming now redoes the failed video (the data is mended), it is not skipped as done
    again = run_local(tiny_cfg(bad.parent / "bad", run), progress=False, stages=stages)
    assert again["skipped"] == VIDEOS - 1 and again["done"] + again["failed"] == 1
