"""rvos-ray: top-down referring video object segmentation on Ray."""

__version__ = "0.1.0"
