"""The study's experiments: two rooms, one that runs jobs and one that analyses what they
wrote (both read the on-disk layout through open_lth.foundations.paths).

Running jobs:
sweep.py       runs of main.py in phases: --dry_run, --print_commands, --jobs=N
slurm.py       the same phases as Slurm jobs; packs.py groups runs into packs
status.py, folder_status.py   `main.py status`: what a sweep or a results root holds
lenet_fisher_vs_magnitude.py, resnet_fisher_vs_magnitude.py, instability.py,
pruning_at_init.py   the studies

Analysis:
load.py        results roots -> pandas DataFrames (runs, metrics, sparsity, curves, barriers)
plots.py, plots_at_init.py   the study's figures (matplotlib Figures) and tables
report.py      `main.py report --root=... --out=...` (report_writer.py draws and writes)
results.ipynb  a notebook that shows a results root's figures and tables

The tests' hand-written results root is tests/synthetic.py.
"""

if __name__ == "experiments":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)
