"""The command line: `python main.py <subcommand> [--flags]`; see README.md."""

import sys

from open_lth.cli import main

if __name__ == "__main__":
    sys.exit(main())
