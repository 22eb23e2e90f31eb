"""Masks and pruning strategies (magnitude, fisher, random, gem_miner)."""
