"""Platforms: where runs and data live and which device runs them."""

if __name__ == "platforms":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)


from open_lth.platforms import colab, local  # noqa: F401
