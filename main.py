"""The command line: `python main.py <subcommand> [--flags]`; see README.md and docs/

The work is in open_lth/main.py. This script's folder (the checkout) goes to the end
of the import path: its plugin folders (`datasets/`, `models/`, ...) are imported as
`open_lth.datasets` and so on, and a package installed under one of their plain names
(Hugging Face's `datasets`, which `transformers` imports) must win over the folder."""

import sys

if __name__ == "__main__":
    sys.path.append(sys.path.pop(0))

from open_lth.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
