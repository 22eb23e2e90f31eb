"""The command line's entry point, and the one place where the plugins join.

Importing a plugin package registers its models, data sets, strategies, platforms,
branches or subcommands; the rest of the core only looks them up by name. The plugin
folders sit at the top of the checkout (the user's layout) but are imported as
`open_lth.models`, `open_lth.datasets`, ... so that they never clash with a top-level
package of the same name (Hugging Face's `datasets` above all)."""

from __future__ import annotations

import sys

from open_lth import cli
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError


def load_plugins() -> None:
    """Import every module that fills a registry (idempotent). An empty registry after
    that is a broken install, never a silently empty choice."""
    import open_lth.datasets  # noqa: F401
    import open_lth.experiments.analysis.report  # noqa: F401  (subcommand: report)
    import open_lth.experiments.jobs.status  # noqa: F401  (subcommand: status)
    import open_lth.models  # noqa: F401
    import open_lth.platforms  # noqa: F401
    import open_lth.pruning  # noqa: F401
    import open_lth.tickets  # noqa: F401  (subcommand: export)
    from open_lth.lottery import pack, runner  # noqa: F401  (subcommands: lottery, pack)
    from open_lth.lottery.branches import controls, instability  # noqa: F401
    from open_lth.lottery.branches import runner as branch_runner  # noqa: F401
    from open_lth.training import runner as train_runner  # noqa: F401

    for kind, registry in registries.ALL.items():
        if not registry.names():
            raise UserError(f"no {kind} are registered: the open_lth install is broken")


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user's mistake is one line on stderr and exit status 2."""
    try:
        load_plugins()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return cli.main(argv)


def cli_entry() -> None:
    """The `open_lth` console script."""
    sys.exit(main())
