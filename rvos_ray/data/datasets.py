"""``open_dataset(root, split, dataset)``: the reader named by config ``data.dataset``."""

from __future__ import annotations

from typing import Union

from rvos_ray.data.errors import DataError
from rvos_ray.data.mevis import MeViS
from rvos_ray.data.refytvos import RefDAVIS17, RefYTVOS

DATASETS: dict[str, type] = {"refytvos": RefYTVOS, "davis": RefDAVIS17, "mevis": MeViS}
"""config ``data.dataset`` -> reader class (each built as ``cls(root, split)``)."""

Dataset = Union[RefYTVOS, MeViS]


def open_dataset(root: str, split: str, dataset: str = "refytvos") -> Dataset:
    """Build the reader for ``dataset`` (refytvos | davis | mevis) over ``root``/``split``."""
    try:
        cls = DATASETS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r} (data.dataset); expected one of {sorted(DATASETS)}") from None
    return cls(root, split)
