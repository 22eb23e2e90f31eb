"""Packaging: `pip install -e .` (extras: test, bench, slurm, torchvision, tensorboard,
wandb, docs; test runs the notebooks with nbclient in an ipykernel "python3" kernel, the
trackers with the real libraries, and the docs build).

The plugin folders at the top of the checkout install as sub-packages of open_lth
(`open_lth.datasets`, ...), never as top-level packages: a top-level `datasets` would
clash with Hugging Face's (Colab ships it, `transformers` imports it)."""

from setuptools import find_packages, setup

PLUGINS = ["models", "datasets", "pruning", "platforms", "experiments"]
packages = find_packages(include=["open_lth", "open_lth.*"])
package_dir = {}
for plugin in PLUGINS:
    for sub in [plugin, *(f"{plugin}.{p}" for p in find_packages(where=plugin))]:
        packages.append(f"open_lth.{sub}")
    package_dir[f"open_lth.{plugin}"] = plugin

setup(
    name="open_lth",
    version="0.1.0",
    description="Lottery-ticket experiments: IMP, pruning strategies, rewinding, instability",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    entry_points={"console_scripts": ["open_lth = open_lth.main:cli_entry"]},
    install_requires=[
        # A range that the local CPU build 2.13.0 satisfies; install it first on a
        # machine without CUDA so that pip does not fetch a CUDA build.
        "torch>=2.2,<3",
        "numpy>=1.24",
        "pandas>=2.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        # Tickets (main.py export): tensors and a string header, no pickle.
        "safetensors>=0.4",
    ],
    extras_require={
        # The tests run the trackers with the real libraries (tests/test_trackers.py) and
        # the notebooks (tests/test_notebooks.py).
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",  # the suite runs with -n auto
            "ruff>=0.4",
            "mkdocs>=1.5",  # tests/test_readme.py builds the docs
            "tensorboard>=2.12",
            "wandb>=0.19.10",
            "nbclient>=0.7",
            "nbformat>=5.7",
            "ipykernel>=6",
        ],
        # The conventional PIL + DataLoader baseline of benchmarks/train_speed.py.
        "bench": ["pillow>=9"],
        # Sweeps on a Slurm cluster: experiments/jobs/slurm.py.
        "slurm": ["submitit>=1.5"],
        # JPEGs decoded on the GPU in batches (open_lth/training/decoders.py).
        "torchvision": ["torchvision>=0.19"],
        "docs": ["mkdocs>=1.5"],
        # --loggers=tensorboard, --loggers=wandb (wandb>=0.19.10: several runs at once, a pack's).
        "tensorboard": ["tensorboard>=2.12"],
        "wandb": ["wandb>=0.19.10"],
    },
)
