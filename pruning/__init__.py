"""Pruning strategies and the shared selector. Each strategy registers itself in
`open_lth.registries.strategies` where it is defined."""

from pruning import fisher, gem_miner, magnitude, random  # noqa: F401
