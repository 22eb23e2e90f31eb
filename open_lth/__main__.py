"""`python -m open_lth <subcommand> [--flags]`: the same as `python main.py`."""

import sys

from open_lth.main import main

if __name__ == "__main__":
    sys.exit(main())
