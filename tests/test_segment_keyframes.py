"""Keyframe sampling: span centres, every frame of a short video, determinism."""

import pytest

from rvos_ray.registry import ConfigError
from rvos_ray.stages.keyframes import keyframes_of, sample_keyframes
from rvos_ray.types import Video


@pytest.mark.parametrize(
    "t, k, expected",
    [
        # centres of 7 spans of 2 frames: (2i+1)*14 // 14 = 2i+1
        (14, 7, [1, 3, 5, 7, 9, 11, 13]),
        # T=20, K=7: (2i+1)*20 // 14 -> 1, 4, 7, 10, 12, 15, 18
        (20, 7, [1, 4, 7, 10, 12, 15, 18]),
        # T=8, K=7: 8//14=0, 24//14=1, 40//14=2, 56//14=4, 72//14=5, 88//14=6, 104//14=7
        (8, 7, [0, 1, 2, 4, 5, 6, 7]),
        (100, 1, [50]),
        (7, 7, [0, 1, 2, 3, 4, 5, 6]),  # T == K: every frame
        (3, 7, [0, 1, 2]),  # T < K: every frame
        (0, 7, []),
    ],
)
def test_sample_keyframes_hand_computed(t, k, expected):
    assert sample_keyframes(t, k) == expected


def test_keyframes_are_distinct_sorted_in_range_and_deterministic():
    for t in range(1, 120):
        for k in (1, 2, 5, 7, 10):
            f = sample_keyframes(t, k)
            assert f == sorted(set(f))
            assert len(f) == min(t, k)
            assert all(0 <= i < t for i in f)
            assert f == sample_keyframes(t, k)


def test_keyframes_of_video_uses_its_length():
    names = tuple(f"{5 * i:05d}" for i in range(30))
    video = Video("v", names, tuple(f"/x/{n}.jpg" for n in names))
    assert keyframes_of(video, 7) == sample_keyframes(30, 7) == [2, 6, 10, 15, 19, 23, 27]


def test_bad_k_is_a_config_error():
    with pytest.raises(ConfigError, match="keyframes.k"):
        sample_keyframes(10, 0)
