"""Synthetic spine cohort generator (see ../README.md, the data card)."""

from .cohort import generate

__all__ = ["generate"]
