"""Pruning strategies and the shared selector. Each strategy registers itself in
`open_lth.foundations.registries.strategies` where it is defined."""

if __name__ == "pruning":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)


from open_lth.pruning import at_init, fisher, gem_miner, grasp, magnitude, random, snip, synflow  # noqa: F401
