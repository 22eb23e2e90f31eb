"""The extension points. Models, data sets, initializers, pruning strategies, branches
and platforms register themselves here with a decorator where they are defined;
the core looks them up by name and never imports a concrete one."""

from open_lth.registry import FamilyRegistry, Registry

models = FamilyRegistry("model", examples=lambda family: list(family.name_examples))
datasets = Registry("dataset")
initializers = Registry("initializer")
strategies = Registry("pruning strategy", "pruning strategies")
branches = Registry("branch", "branches")
platforms = Registry("platform")
subcommands = Registry("subcommand")


def load_plugins() -> None:
    """Import the packages whose modules fill the registries."""
    import datasets as _datasets  # noqa: F401
    import experiments.report as _report  # noqa: F401
    import experiments.status as _status  # noqa: F401
    import models as _models  # noqa: F401
    import platforms as _platforms  # noqa: F401
    import pruning as _pruning  # noqa: F401
    from open_lth import (  # noqa: F401
        branches,
        runner_branch,
        runner_lottery,
        runner_pack,
        runner_train,
    )
