"""Platforms: where runs and data live and which device runs them."""

from platforms import colab, local  # noqa: F401
