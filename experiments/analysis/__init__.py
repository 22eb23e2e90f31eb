"""Analysis: reading what the jobs wrote, never running anything.

load.py           results roots -> pandas DataFrames (runs, metrics, sparsity, curves, barriers)
plots.py, plots_at_init.py   the study's figures (matplotlib Figures) and tables
report.py         `main.py report --root=... --out=...` (report_writer.py draws and writes)

Arrows: analysis imports the core (and open_lth.api) and nothing of jobs/ or the studies,
so a notebook or a report opens results without the machinery that made them.
"""
