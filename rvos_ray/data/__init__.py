"""Datasets (Ref-YouTube-VOS, Ref-DAVIS17, MeViS), the synthetic benchmark, submissions.

``open_dataset`` is imported lazily so that ``rvos_ray.data.errors`` stays import-light.
"""


def __getattr__(name: str):
    if name in ("open_dataset", "DATASETS"):
        from rvos_ray.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'rvos_ray.data' has no attribute {name!r}")
