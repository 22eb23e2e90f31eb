"""The extension points. Models, data sets, initializers, pruning strategies, branches
and platforms register themselves here with a decorator where they are defined;
the core looks them up by name and never imports a concrete one: main.py imports the
plugins (main.load_plugins)."""

from open_lth.foundations.registry import FamilyRegistry, Registry

models = FamilyRegistry("model", examples=lambda family: list(family.name_examples))
datasets = Registry("dataset")
initializers = Registry("initializer")
strategies = Registry("pruning strategy", "pruning strategies")
branches = Registry("branch", "branches")
platforms = Registry("platform")
subcommands = Registry("subcommand")
