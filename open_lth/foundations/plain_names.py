"""The plugin folders (`datasets/`, `models/`, ...) are `open_lth.datasets` and so on. Run
from the checkout's root (`python -c`, a notebook there), the current folder comes first
on the import path and `import datasets` would find the folder instead of an installed
package of that name: Hugging Face's `datasets`, which `transformers` imports. A folder
imported by its plain name steps aside for that package, and is otherwise not there."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import PathFinder
from pathlib import Path


def step_aside(name: str, init_file: str) -> None:
    """Called at the top of a plugin's __init__ when `__name__` is its plain name: put
    the installed package of that name in its place in `sys.modules`, or fail as if the
    folder were not on the path (the import system returns what `sys.modules` holds)."""
    checkout = Path(init_file).resolve().parent.parent
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != checkout]
    spec = PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        del sys.modules[name]
        raise ModuleNotFoundError(
            f"No module named '{name}' (this checkout's {name}/ is open_lth.{name})", name=name
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
