"""The data sets. Importing this package registers each one in
`open_lth.foundations.registries.datasets` under its name ("mnist", "cifar10")."""

from datasets import cifar10, mnist  # noqa: F401
