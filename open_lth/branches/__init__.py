"""The lottery branches; each registers itself in `open_lth.registries.branches`."""

from open_lth.branches import controls, instability  # noqa: F401
