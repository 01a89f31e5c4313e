"""Run directory: atomic per-video tables, done/failure records, resume config check, merges."""

import json
import os

import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from rvos_ray.config import load_config
from rvos_ray.registry import ConfigError
from rvos_ray.runtime.run_dir import RunDir, config_differences
from rvos_ray.types import PREDICTION_SCHEMA, TRACKLET_SCHEMA, Failure, SchemaError, table_from_columns


def _pred(vid, rows):
    return table_from_columns(
        {"video_id": [vid] * len(rows), "exp_id": [r[0] for r in rows],
         "tracklet_id": [r[1] for r in rows], "score": [r[2] for r in rows]},
        PREDICTION_SCHEMA,
    )


def _tracklets(vid):
    return table_from_columns(
        {"video_id": [vid, vid], "tracklet_id": [0, 0], "keyframe": [1, 1], "source": ["htc", "htc"],
         "det_score": [0.5, 0.5], "frame": [0, 1], "height": [2, 2], "width": [2, 2],
         "rle": [b"04", b"13"], "prob": [1.0, 0.75]},
        TRACKLET_SCHEMA,
    )


def test_tables_round_trip_and_leave_no_temp_files(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    rd.write_table("v1", "tracklets", _tracklets("v1"))
    back = rd.read_table("v1", "tracklets")
    assert back.equals(_tracklets("v1"))
    assert back.schema.field("source").type == TRACKLET_SCHEMA.field("source").type
    files = os.listdir(tmp_path / "run" / "videos" / "v1")
    assert files == ["tracklets.parquet"]  # the temp sibling was renamed away


def test_wrong_schema_is_refused_naming_the_table(tmp_path):
    rd = RunDir(str(tmp_path))
    with pytest.raises(SchemaError, match="prediction table of 'v1'"):
        rd.write_table("v1", "prediction", _tracklets("v1"))


def test_done_and_failure_records(tmp_path):
    rd = RunDir(str(tmp_path))
    assert rd.done_videos() == set()
    rd.write_failure(Failure("v2", "segmentation", "DataError", "cannot read frame 00000.jpg"))
    rd.mark_done("v1", {"expressions": 2})
    assert rd.done_videos() == {"v1"}
    assert rd.done_record("v1")["expressions"] == 2
    assert [f.video_id for f in rd.failures()] == ["v2"]
    # v2 succeeds on a later attempt: its failure record goes away
    rd.mark_done("v2", {})
    assert rd.failures() == []
    assert rd.done_videos() == {"v1", "v2"}


def test_merge_sorts_by_key_and_skips_missing(tmp_path):
    rd = RunDir(str(tmp_path))
    rd.write_table("b", "prediction", _pred("b", [("1", 3, 0.5), ("0", 1, 0.25)]))
    rd.write_table("a", "prediction", _pred("a", [("0", 2, 0.75)]))
    merged = rd.merge("prediction", ["b", "a", "missing"], "predictions.parquet")
    assert merged.column("video_id").to_pylist() == ["a", "b", "b"]
    assert merged.column("exp_id").to_pylist() == ["0", "0", "1"]
    assert rd.read_split_table("predictions.parquet", "prediction").equals(merged)


def test_events_round_trip(tmp_path):
    rd = RunDir(str(tmp_path))
    events = [{"video_id": "v", "stage": "nms", "item": "all", "start": 1.0, "end": 2.5}]
    rd.write_events("v", events)
    assert rd.read_events("v") == events
    rd.write_run_events(events)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == events


def test_config_check_on_resume(tmp_path):
    rd = RunDir(str(tmp_path))
    cfg = load_config(None, [f"run.dir={tmp_path}", "nms.iou_threshold=0.5"])
    rd.write_config(cfg)
    # run/ray settings and the video selection may change between attempts
    rd.write_config(load_config(None, [f"run.dir={tmp_path}", "nms.iou_threshold=0.5",
                                       "ray.max_videos_in_flight=9", "data.videos=2"]))
    # a result-affecting key may not
    with pytest.raises(ConfigError, match="nms.iou_threshold"):
        rd.write_config(load_config(None, [f"run.dir={tmp_path}", "nms.iou_threshold=0.7"]))


def test_config_differences_lists_dotted_keys():
    a = OmegaConf.create({"nms": {"iou_threshold": 0.5, "max_tracklets": 10}, "run": {"dir": "x"}})
    b = OmegaConf.create({"nms": {"iou_threshold": 0.5, "max_tracklets": 5}, "run": {"dir": "y"}})
    assert config_differences(a, b) == ["nms.max_tracklets"]


def test_empty_run_dir_is_a_config_error():
    with pytest.raises(ConfigError, match="run.dir"):
        RunDir(" ")


def test_failures_table(tmp_path):
    rd = RunDir(str(tmp_path))
    t = rd.write_failures_table([Failure("b", "nms", "ValueError", "x"), Failure("a", "writer", "OSError", "y")])
    assert t.column("video_id").to_pylist() == ["a", "b"]
    assert isinstance(t, pa.Table) and (tmp_path / "failures.parquet").exists()
