"""The extension points. Models, data sets, initializers, pruning strategies, branches
and platforms register themselves here with a decorator where they are defined;
the core looks them up by name and never imports a concrete one: open_lth.main imports
the plugins (load_plugins)."""

from open_lth.foundations.registry import FamilyRegistry, Registry

models = FamilyRegistry("model", examples=lambda family: list(family.name_examples))
datasets = Registry("dataset")
initializers = Registry("initializer")
strategies = Registry("pruning strategy", "pruning strategies")
branches = Registry("branch", "branches")
platforms = Registry("platform")
subcommands = Registry("subcommand")

# Every registry, by what it holds: load_plugins checks that none is left empty.
ALL = {
    r.plural: r
    for r in (models, datasets, initializers, strategies, branches, platforms, subcommands)
}
