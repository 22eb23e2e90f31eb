"""The data sets. Importing this package registers each one in
`open_lth.foundations.registries.datasets` under its name ("mnist", "cifar10",
"imagenet", "tinyimagenet")."""

if __name__ == "datasets":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)


from open_lth.datasets import cifar10, imagenet, mnist, tinyimagenet  # noqa: F401
