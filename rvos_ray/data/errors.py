"""Errors about input data. Messages name the file or key and what was expected."""


class DataError(ValueError):
    """Bad or missing input data (dataset root, meta file, annotation PNG, prediction)."""
