"""The command line: `python main.py <subcommand> [--flags]`; see README.md.

This is where the plugins join: importing a package registers its models, data sets,
strategies, platforms, branches or subcommands, and the core (open_lth/) only looks them
up by name, so no import runs from the core up to the plugins."""

import sys

from open_lth import cli


def load_plugins() -> None:
    """Import every module that fills a registry (idempotent)."""
    import datasets  # noqa: F401
    import experiments.report  # noqa: F401  (subcommand: report)
    import experiments.status  # noqa: F401  (subcommand: status)
    import models  # noqa: F401
    import platforms  # noqa: F401
    import pruning  # noqa: F401
    from open_lth.lottery import pack, runner  # noqa: F401  (subcommands: lottery, pack)
    from open_lth.lottery.branches import controls, instability  # noqa: F401
    from open_lth.lottery.branches import runner as branch_runner  # noqa: F401
    from open_lth.training import runner as train_runner  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user's mistake is one line on stderr and exit status 2."""
    load_plugins()
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
