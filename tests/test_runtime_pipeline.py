"""The per-video plumbing of the pipeline, by hand: keyframe batches, the propagation plan and
its tracklet ids, candidate slices, tracklet concatenation, the chosen masks the writer and
scorer read."""

import numpy as np
import pytest

from rvos_ray import masks
from rvos_ray.registry import ConfigError
from rvos_ray.runtime.pipeline import ChosenMasks, keyframe_batches, timed
from rvos_ray.stages.propagate import PropagationCall, propagation_plan
from rvos_ray.stages.prune import subset
from rvos_ray.stages.segment import PoolStage
from rvos_ray.stages.tracklet_nms import concat_tracklets
from rvos_ray.types import VideoWork
from rvos_ray.types import PREDICTION_SCHEMA, TRACKLET_SCHEMA, Candidates, Expression, Video, table_from_columns


def video(n=14):
    return Video("v", tuple(f"{i:05d}" for i in range(n)), tuple(f"/x/{i:05d}.jpg" for i in range(n)))


def cands(frame, n, source="htc"):
    m = np.zeros((4, 6), np.uint8)
    return Candidates("v", frame, 4, 6, tuple(masks.encode(m) for _ in range(n)),
                      tuple(0.5 for _ in range(n)), tuple(1 for _ in range(n)), (source,) * n)


def test_keyframe_batches():
    kf, batches = keyframe_batches(video(14), k=7, batch_size=3)
    assert kf == [1, 3, 5, 7, 9, 11, 13]
    assert batches == [[1, 3, 5], [7, 9, 11], [13]]
    assert keyframe_batches(video(14), k=7, batch_size=0)[1] == [[f] for f in kf]  # at least 1


def test_plan_numbers_tracklets_keyframe_by_keyframe():
    # 5 candidates on keyframe 0, none on 1, 3 on 2; chunks of 2
    plan = propagation_plan([5, 0, 3], chunk=2)
    assert plan == [
        PropagationCall(0, 0, 2, 0), PropagationCall(0, 2, 4, 2), PropagationCall(0, 4, 5, 4),
        PropagationCall(2, 0, 2, 5), PropagationCall(2, 2, 3, 7),
    ]
    ids = [i for call in plan for i in call.tracklet_ids]
    assert ids == list(range(8))  # every candidate once, no gaps
    assert propagation_plan([0, 0], chunk=8) == []
    with pytest.raises(ConfigError, match="candidates_per_call"):
        propagation_plan([1], chunk=0)


def test_candidate_subsets_keep_fields_aligned():
    c = Candidates("v", 3, 4, 6, (b"a", b"b", b"c"), (0.1, 0.2, 0.3), (1, 2, 3), ("x", "y", "z"))
    s = subset(c, range(1, 3))
    assert (s.rles, s.scores, s.labels, s.sources, s.frame) == ((b"b", b"c"), (0.2, 0.3), (2, 3), ("y", "z"), 3)


def test_pooling_concatenates_models_in_order():
    batches = [[cands(1, 2, "htc"), cands(3, 1, "htc")], [cands(1, 1, "ci"), cands(3, 0, "ci")]]
    *pooled, counts = PoolStage(2).process([1, 3], *batches)
    assert counts == [3, 1]
    assert pooled[0].sources == ("htc", "htc", "ci")
    # (each segment call's frames are checked by the segmenter: test_segment_pooling.py)


def test_the_graph_plans_a_36_frame_video_at_paper_counts():
    """tiny.yaml's graph for a 36-frame video, K=7: segment calls per model and batch, one
    pooling call, then planning stops until the candidate counts are known; after them, a
    propagation call per keyframe and chunk, NMS, one grounding call for the two variants that
    share their encoders, the ensemble and the writer, which receives every call's event."""
    from omegaconf import OmegaConf

    from rvos_ray.config import load_config
    from rvos_ray.runtime import graph

    c = OmegaConf.to_container(load_config("configs/tiny.yaml", ["keyframes.k=7"]), resolve=True)
    work = VideoWork(video(36), (Expression("v", "0", "a thing", (1,)),))
    g = graph.VideoGraph(c, work, "/tmp/run")
    first = g.plan()
    batches = -(-7 // c["segmentation"]["resources"]["batch_size"])
    assert [x.stage for x in first] == ["segmentation"] * (2 * batches) + ["pooling"]
    pool = first[-1]
    assert g.waiting == pool.out(7) and pool.returns == 7 + 2 and not g.done  # 7 keyframes, counts, event
    assert [x.key for x in first[:2]] == [("segmentation", "htc")] * min(2, batches)
    g.values[g.waiting] = [12] * 7  # 12 candidates on every keyframe
    rest = g.plan()
    per_call = c["propagation"]["candidates_per_call"]
    stages = [x.stage for x in rest]
    assert stages.count("propagation") == 7 * -(-12 // per_call)
    assert stages[-4:] == ["nms", "grounding", "ensemble", "writer"] and g.done
    ground = rest[-3]
    assert ground.key == ("grounding", "tiny-r18-t+tiny-r18-t2") and ground.args[1] == rest[-4].out(1)
    assert set(graph.stages_of(c)) == {x.key for x in g.calls}  # a stage object for every call
    writer = rest[-1]
    assert all(x.event in writer.args for x in g.calls if x is not writer)
    with pytest.raises(graph.StageError, match="propagation"):
        bad = graph.VideoGraph({**c, "propagation": {**c["propagation"], "candidates_per_call": 0}}, work, "/tmp/r")
        bad.plan()
        bad.values[bad.waiting] = [1] * 7
        bad.plan()


def test_the_graph_orders_keyframes_when_covered_candidates_are_skipped():
    """propagation.avoid.covered_iou: each keyframe's calls take every earlier keyframe's tables
    (so they run after them) and a video's propagation calls share a replica; duplicate_iou
    goes to the pooling stage. Off (the default): neither, as in the paper."""
    from omegaconf import OmegaConf

    from rvos_ray.config import load_config
    from rvos_ray.runtime import graph

    work = VideoWork(video(36), (Expression("v", "0", "a thing", (1,)),))

    def propagation(*overrides):
        c = OmegaConf.to_container(load_config("configs/tiny.yaml", ["keyframes.k=7", *overrides]), resolve=True)
        g = graph.VideoGraph(c, work, "/tmp/run")
        g.plan()
        g.values[g.waiting] = [12] * 7
        return graph.stages_of(c)[("pooling",)], [x for x in g.plan() if x.stage == "propagation"]

    pool, calls = propagation()
    assert pool.duplicate_iou is None and {x.affinity for x in calls} == {""}
    assert all(len(x.args) == 3 for x in calls)  # no earlier tables
    pool, calls = propagation("propagation.avoid.covered_iou=0.5", "propagation.avoid.duplicate_iou=0.7")
    assert pool.duplicate_iou == 0.7 and {x.affinity for x in calls} == {"v"}
    for x in calls:
        k = x.args[2].keyframe_index
        earlier = {a.call for a in x.args[3:]}
        assert earlier == {y.id for y in calls if y.args[2].keyframe_index < k}
    _, calls = propagation("propagation.avoid.feature_cache_frames=36")
    assert {x.affinity for x in calls} == {"v"} and all(len(x.args) == 3 for x in calls)
    paper = load_config("configs/paper.yaml").propagation.avoid  # paper-faithful: all off
    assert (paper.duplicate_iou, paper.covered_iou, paper.feature_cache_frames) == (None, None, 0)


def _tracklets(rows):
    cols = {k: [] for k in TRACKLET_SCHEMA.names}
    for tid, frame, source in rows:
        m = np.zeros((4, 6), np.uint8)
        m[0, tid] = 1
        for k, val in (("video_id", "v"), ("tracklet_id", tid), ("keyframe", 0), ("source", source),
                       ("det_score", 0.5), ("frame", frame), ("height", 4), ("width", 6),
                       ("rle", masks.encode(m)), ("prob", 1.0)):
            cols[k].append(val)
    return table_from_columns(cols, TRACKLET_SCHEMA)


def test_concat_tracklets_sorts_and_unifies_dictionaries():
    a = _tracklets([(2, 1, "ci"), (2, 0, "ci")])
    b = _tracklets([(0, 0, "htc"), (0, 1, "htc")])
    t = concat_tracklets([a, b])
    assert list(zip(t.column("tracklet_id").to_pylist(), t.column("frame").to_pylist())) == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert t.column("source").to_pylist() == ["htc", "htc", "ci", "ci"]
    assert concat_tracklets([]).num_rows == 0


def test_chosen_masks_reads_the_predicted_tracklet_and_empty_elsewhere():
    v = video(2)
    work = VideoWork(v, (Expression("v", "0", "a", (1,)), Expression("v", "1", "b", (2,))))
    t = _tracklets([(3, 0, "htc"), (3, 1, "htc"), (4, 0, "htc")])
    pred = table_from_columns({"video_id": ["v"], "exp_id": ["0"], "tracklet_id": [4], "score": [0.9]},
                              PREDICTION_SCHEMA)
    cm = ChosenMasks(work, t, pred, 4, 6)
    assert cm.read("v", "0", "00000")[0, 4] == 1 and cm.read("v", "0", "00000").sum() == 1
    assert cm.read("v", "0", "00001").sum() == 0  # tracklet 4 has no row on frame 1
    assert cm.read("v", "1", "00000").sum() == 0  # expression without a prediction row
    assert cm.read("v", "0", "00000").shape == (4, 6)


def test_timed_event():
    out, ev = timed("nms", "v", "all", lambda: 42)
    assert out == 42
    assert {"video_id": "v", "stage": "nms", "item": "all"}.items() <= ev.items()
    assert ev["end"] >= ev["start"] and ev["pid"] > 0
