"""Packaging: `pip install -e .` (extras: test, bench, slurm, torchvision)."""

from setuptools import find_packages, setup

setup(
    name="open_lth",
    version="0.1.0",
    description="Lottery-ticket experiments: IMP, pruning strategies, rewinding, instability",
    python_requires=">=3.10",
    packages=find_packages(
        include=[
            "open_lth",
            "open_lth.*",
            "models",
            "datasets",
            "pruning",
            "platforms",
            "experiments",
        ]
    ),
    py_modules=["main"],
    install_requires=[
        # A range that the local CPU build 2.13.0 satisfies; install it first on a
        # machine without CUDA so that pip does not fetch a CUDA build.
        "torch>=2.2,<3",
        "numpy>=1.24",
        "pandas>=2.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff>=0.4"],
        # The conventional PIL + DataLoader baseline of benchmarks/train_speed.py.
        "bench": ["pillow>=9"],
        # Sweeps on a Slurm cluster: experiments/slurm.py.
        "slurm": ["submitit>=1.5"],
        "torchvision": ["torchvision"],
    },
)
