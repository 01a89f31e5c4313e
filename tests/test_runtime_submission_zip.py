"""The run's submission.zip is written in its data.dataset's layout (issue 13 item 10).

A model-free run (``_sweep_support.build_run``: ground-truth tracklets, made-up grounding) goes
through :func:`rvos_ray.runtime.run_lifecycle.finish_run`, which zips the submission."""

from __future__ import annotations

import zipfile

from _sweep_support import build_run, make_data
from rvos_ray.data import submission


def _names(run) -> list[str]:
    with zipfile.ZipFile(run / "submission.zip") as zf:
        return sorted(zf.namelist())


def test_run_zip_follows_the_datasets_layout(tmp_path, monkeypatch):
    data = make_data(tmp_path / "shapes", videos=2)
    build_run(data, tmp_path / "ytvos", "run.submission_zip=true")
    ytvos = _names(tmp_path / "ytvos")
    assert ytvos and all(n.startswith("Annotations/") for n in ytvos)
    # Ref-DAVIS reads the same files; give it the video-folders layout (MeViS's) to see that the
    # run passes data.dataset through to the zip writer
    monkeypatch.setitem(submission.SUBMISSION_LAYOUTS, "davis", "videos")
    build_run(data, tmp_path / "davis", "run.submission_zip=true", "data.dataset=davis")
    assert _names(tmp_path / "davis") == [n[len("Annotations/"):] for n in ytvos]
