"""Progress-bar rates from done records, hand-computed."""

from rvos_ray.telemetry.progress import StageRates, _num


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rates_per_stage_and_videos_per_wall_second():
    clock = Clock()
    r = StageRates(clock)
    assert r.postfix() == ""
    r.add({"frames": 10, "stage_seconds": {"segmentation": 2.0, "nms": 0.01}})
    r.add({"frames": 30, "stage_seconds": {"segmentation": 6.0, "nms": 0.03}})
    clock.t = 110.0
    # 40 frames over 8 s of segmentation; over 0.04 s of NMS
    assert r.rates() == {"segmentation": 5.0, "nms": 1000.0}
    assert r.videos_per_s() == 0.2
    assert r.bottleneck() == "segmentation"
    assert r.postfix() == "0.2 video/s | seg 5.0 f/s  nms 1.0k f/s"


def test_number_format():
    assert [_num(x) for x in (0.042, 3.14, 12.4, 950.0, 1234.0)] == ["0.042", "3.1", "12", "950", "1.2k"]
