"""Real video lengths through the whole pipeline, on both executors.

Ref-YouTube-VOS videos have 20-36 annotated frames and P=10 tracklets survive NMS, so grounding
sees 360 (frame, tracklet) masks per video; MeViS and long-video users go to hundreds of frames.
(pycocotools' area() refused more than 255 masks per call: grounding failed on every such video
while the suite's 5-frame videos passed.) Pixels stay small (64x96) so this stays fast; counts
are real: K=7 keyframes, >= 10 candidates per keyframe, P=10.
"""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from _runtime_support import assert_same_results, tiny_cfg
from rvos_ray.data.synthetic import make_shapes
from rvos_ray.runtime.local_exec import run_local
from rvos_ray.runtime.run_dir import RunDir

pytestmark = pytest.mark.slow

#: the realistic counts (K, candidates per keyframe from the two segmenters, P)
SCALE = (
    "keyframes.k=7",
    "segmentation.models.0.max_per_frame=6",  # HTC: 6 + CondInst: 6 = 12 candidates per keyframe
    "segmentation.models.1.max_per_frame=6",
    "nms.max_tracklets=10",
    "nms.iou_threshold=1.0",  # random-init masks overlap a lot: keep P=10 whatever they look like
    "propagation.options.long_edge=96",  # the frames' own size
    "propagation.candidates_per_call=12",
)


def _data(root, frames: int):
    make_shapes(str(root), videos=1, seed=5, height=64, width=96, min_frames=frames, max_frames=frames)
    return root


@pytest.fixture(scope="module")
def data36(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("shapes36"), 36)


@pytest.fixture(scope="module")
def data120(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("shapes120"), 120)


#: the 120-frame video: length is its point; 2 + 2 candidates per keyframe (28 tracklets) keep
#: it fast while NMS still keeps P=10
LONG = (*SCALE, "segmentation.models.0.max_per_frame=2", "segmentation.models.1.max_per_frame=2")


def _check(run, frames: int, min_per_keyframe: int = 10) -> None:
    rd = RunDir(str(run))
    [vid] = rd.done_videos()
    kept = rd.read_table(vid, "tracklets")
    assert len(set(kept.column("tracklet_id").to_pylist())) == 10
    assert kept.num_rows == 10 * frames  # 360 masks for 36 frames: > 255 in one grounding call
    every = rd.read_table(vid, "tracklets_all")
    per_keyframe = len(set(every.column("tracklet_id").to_pylist())) / 7
    assert per_keyframe >= min_per_keyframe
    grounding = rd.read_table(vid, "grounding")
    assert grounding.num_rows > 0
    metrics = pq.read_table(run / "metrics.parquet")
    assert metrics.num_rows == len(RunDir(str(run)).read_table(vid, "prediction"))
    assert set(metrics.column("n_frames").to_pylist()) == {frames}


@pytest.fixture(scope="module")
def local36(data36, tmp_path_factory):
    run = tmp_path_factory.mktemp("local36") / "run"
    s = run_local(tiny_cfg(data36, run, *SCALE), progress=False)
    assert (s["done"], s["failed"]) == (1, 0), s["failures"]
    return run


def test_a_36_frame_video_with_p10_tracklets_in_process(local36):
    _check(local36, 36)


def test_a_120_frame_video_in_process(data120, tmp_path):
    run = tmp_path / "run"
    s = run_local(tiny_cfg(data120, run, *LONG), progress=False)
    assert (s["done"], s["failed"]) == (1, 0), s["failures"]
    _check(run, 120, min_per_keyframe=2)


@pytest.mark.ray
def test_the_same_videos_on_ray_give_the_same_tables(data36, data120, local36, tmp_path):
    ray = pytest.importorskip("ray")
    from rvos_ray.runtime.ray_exec import RayExecutor
    from rvos_ray.runtime.ray_session import LOCAL_ENV

    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(address="local", num_cpus=6, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        ex = RayExecutor(tiny_cfg(data36, tmp_path / "ray36", *SCALE))
        s = ex.run(progress=False)
        assert (s["done"], s["failed"]) == (1, 0), s["failures"]
        assert_same_results(local36, tmp_path / "ray36")
        for actors in ex.pools.values():
            for actor in actors:  # the 120-frame run's segmenters keep fewer candidates: new actors
                ray.kill(actor)
        s = RayExecutor(tiny_cfg(data120, tmp_path / "ray120", *LONG)).run(progress=False)
        assert (s["done"], s["failed"]) == (1, 0), s["failures"]
        _check(tmp_path / "ray120", 120, min_per_keyframe=2)
    finally:
        ray.shutdown()
