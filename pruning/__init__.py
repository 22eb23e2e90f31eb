"""Pruning strategies and the shared selector. Each strategy registers itself in
`open_lth.foundations.registries.strategies` where it is defined."""

from pruning import at_init, fisher, gem_miner, grasp, magnitude, random, snip, synflow  # noqa: F401
