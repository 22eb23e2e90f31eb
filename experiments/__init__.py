"""The study's experiments as batch scripts, loaders of run directories, and plots.

load.py        results roots -> pandas DataFrames (runs, metrics, sparsity, curves, barriers)
plots.py       the study's figures (matplotlib Figures) and tables
report.py      `main.py report --root=... --out=...` (report_writer.py draws and writes)
sweep.py       runs of main.py in phases: --dry_run, --print_commands, --jobs=N
lenet_fisher_vs_magnitude.py, resnet_fisher_vs_magnitude.py, instability.py   the studies
synthetic.py   a small hand-written results root, for tests and trying things out
results.ipynb  a notebook that shows a results root's figures and tables
"""

if __name__ == "experiments":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)
