"""The core of the framework, in three rooms: foundations/ (hparams, run descriptions,
registries, the run store), training/ (data, the trainer, `main.py train`) and lottery/
(levels, `main.py lottery` and `pack`, branches). It knows no concrete model, data set or
strategy: those register themselves in `open_lth.foundations.registries` when
open_lth.main imports them.

The plugins keep the user's layout, folders at the top of the checkout (`models/`,
`datasets/`, `pruning/`, `platforms/`, `experiments/`), and are imported as sub-packages
of this one: `open_lth.datasets` can never be Hugging Face's `datasets`. An install maps
the folders there (setup.py's package_dir); in a checkout used without an install (a
GPU machine that runs the project from its root) the checkout joins this package's path."""

from pathlib import Path as _Path

_CHECKOUT = _Path(__file__).resolve().parent.parent
if (_CHECKOUT / "setup.py").is_file() and (_CHECKOUT / "datasets" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))
