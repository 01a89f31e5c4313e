from dataclasses import dataclass
from pathlib import Path

import pytest

from rvos_ray.config import ConfigError, load_config
from rvos_ray.types import Resources
from rvos_ray.registry import Registry, RegistryError, parse_options


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  root: /x\nnms:\n  max_tracklets: 5\n")
    cfg = load_config(p, ["keyframes.k=3", "tasks.resources.custom={seg: 1}"])
    assert cfg.data.root == "/x" and cfg.nms.max_tracklets == 5 and cfg.keyframes.k == 3
    assert Resources.of(cfg.tasks).custom == {"seg": 1.0}


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("nms:\n  max_trackletz: 5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*max_trackletz"):
        load_config(p)


def test_wrong_type_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="keyframes.k"):
        load_config(None, ["keyframes.k=seven"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@dataclass
class _Opts:
    depth: int = 18  # network depth
    name: str = ""


class _Backend:
    Options = _Opts

    def __init__(self, options):
        self.options = options


def test_overrides_index_lists_and_bad_ones_name_the_override():
    cfg = load_config("configs/demo.yaml", ["segmentation.models.0.checkpoint=/w/seg.pth", "data.videos=[a,b]",
                                            "ray.resources={seg: 2}"])
    assert cfg.segmentation.models[0].checkpoint == "/w/seg.pth"
    assert cfg.segmentation.models[0].backend == "mmdet"  # the rest of the entry is kept
    assert list(cfg.data.videos) == ["a", "b"] and dict(cfg.ray.resources) == {"seg": 2.0}
    with pytest.raises(ConfigError, match="segmentation.models.5.checkpoint=x"):
        load_config("configs/demo.yaml", ["segmentation.models.5.checkpoint=x"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("configs/demo.yaml", ["keyframes.k"])
    with pytest.raises(ConfigError, match="keyframes.k"):
        load_config("configs/demo.yaml", ["keyframes.k=many"])


def test_registry_builds_with_typed_options_and_names_errors():
    reg = Registry("thing")
    reg.register("b", f"{__name__}:_Backend")
    obj = reg.build("b", {"backend": "b", "depth": 50}, where="cfg.yaml:propagation")
    assert obj.options.depth == 50
    with pytest.raises(ConfigError, match=r"cfg.yaml:propagation: unknown key 'dpth'"):
        reg.build("b", {"dpth": 50}, where="cfg.yaml:propagation")
    with pytest.raises(ConfigError, match="cfg.yaml:propagation"):
        reg.build("b", {"depth": "deep"}, where="cfg.yaml:propagation")
    with pytest.raises(RegistryError, match="unknown thing 'c'; known: b"):
        reg.get("c")
    with pytest.raises(RegistryError, match="twice"):
        reg.register("b", "x:y")


def test_parse_options_ignores_meta_keys():
    o = parse_options(_Opts, {"backend": "b", "name": "m", "resources": {}}, "w")
    assert o.name == "m" and o.depth == 18  # name is declared by _Opts, so it is kept


def test_model_and_variant_names_are_unique():
    from rvos_ray.config import load_config
    from rvos_ray.registry import ConfigError

    with pytest.raises(ConfigError, match="segmentation.models names must be unique.*htc"):
        load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", ["segmentation.models.1.name=htc"])
    with pytest.raises(ConfigError, match="grounding.variants names must be unique"):
        load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", ["grounding.variants.1.name=tiny-r18-t"])
