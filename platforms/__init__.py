"""Platforms: where runs and data live and which device runs them."""

from platforms import local  # noqa: F401
