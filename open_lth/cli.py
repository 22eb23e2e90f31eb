"""`python main.py <subcommand> [--flags]`: flags are generated from the hparams.

Parsing is two passes: the first finds `--default_hparams` so that the second can
show and use that model's defaults (which is what `--help` then prints); the parsing
lives in open_lth.foundations.runner, where a pack reaches it too."""

from __future__ import annotations

import sys

from open_lth.foundations import distributed
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.runner import Parser, parse, usage  # noqa: F401 (the CLI's names)
from open_lth.training.signals import Interrupted


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    runner, args = parse(argv)
    if args.display_output_location:
        for location in runner.output_locations:  # one folder a line (a pack has several)
            print(location)
        return 0
    runner.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user's mistake is one line on stderr and exit status 2."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        if distributed.is_primary():  # under torchrun, one line from rank 0
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"{e}; run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
