import numpy as np
import pyarrow as pa
import pytest

from rvos_ray.types import (
    GROUNDING_SCHEMA,
    TRACKLET_SCHEMA,
    Candidates,
    SchemaError,
    Video,
    table_from_columns,
    validate,
)


def _tracklet_columns(n=2):
    return {
        "video_id": ["v"] * n,
        "tracklet_id": list(range(n)),
        "keyframe": [0] * n,
        "source": ["htc"] * n,
        "det_score": np.full(n, 0.5),
        "frame": list(range(n)),
        "height": [4] * n,
        "width": [4] * n,
        "rle": [b"x"] * n,
        "prob": [1.0] * n,
    }


def test_table_from_columns_casts_to_schema():
    t = table_from_columns(_tracklet_columns(), TRACKLET_SCHEMA)
    assert t.schema == TRACKLET_SCHEMA
    assert validate(t, TRACKLET_SCHEMA) is not None


def test_validate_names_missing_column():
    t = table_from_columns(_tracklet_columns(), TRACKLET_SCHEMA).drop(["prob"])
    with pytest.raises(SchemaError, match="missing column 'prob'.*float"):
        validate(t, TRACKLET_SCHEMA, "tracklets")


def test_validate_names_wrong_type():
    t = table_from_columns(_tracklet_columns(), TRACKLET_SCHEMA)
    t = t.set_column(t.schema.get_field_index("frame"), "frame", pa.array([0.5, 1.5]))
    with pytest.raises(SchemaError, match="'frame' has type double, expected int32"):
        validate(t, TRACKLET_SCHEMA)


def test_validate_rejects_extra_columns_and_non_tables():
    t = table_from_columns(_tracklet_columns(), TRACKLET_SCHEMA).append_column("oops", pa.array([1, 2]))
    with pytest.raises(SchemaError, match="oops"):
        validate(t, TRACKLET_SCHEMA)
    with pytest.raises(SchemaError, match="pyarrow.Table"):
        validate({"a": 1}, GROUNDING_SCHEMA)


def test_table_from_columns_names_uncastable_column():
    cols = _tracklet_columns()
    cols["tracklet_id"] = ["a", "b"]
    with pytest.raises(SchemaError, match="'tracklet_id'"):
        table_from_columns(cols, TRACKLET_SCHEMA)


def test_candidates_length_and_score_checks():
    with pytest.raises(SchemaError, match="1 rles but 2 scores"):
        Candidates("v", 0, 4, 4, rles=(b"a",), scores=(0.1, 0.2), labels=(1,), sources=("m",))
    with pytest.raises(SchemaError, match=r"not in \[0, 1\]"):
        Candidates("v", 0, 4, 4, rles=(b"a",), scores=(1.5,), labels=(1,), sources=("m",))


def test_candidates_concat_keeps_sources():
    a = Candidates("v", 3, 4, 4, rles=(b"a",), scores=(0.9,), labels=(1,), sources=("htc",))
    b = Candidates("v", 3, 4, 4, rles=(b"b", b"c"), scores=(0.5, 0.4), labels=(2, 3), sources=("condinst",) * 2)
    c = Candidates.concat([a, b])
    assert len(c) == 3 and c.sources == ("htc", "condinst", "condinst") and c.frame == 3
    with pytest.raises(SchemaError, match="cannot pool"):
        Candidates.concat([a, Candidates("v", 4, 4, 4)])


def test_video_checks_lengths():
    with pytest.raises(SchemaError, match="2 frame names but 1 frame paths"):
        Video("v", ("a", "b"), ("p",))
    assert Video("v", ("a",), ("p",)).num_frames == 1
