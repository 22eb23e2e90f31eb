"""The study's experiments, in two rooms and the studies that use them (all three read the
on-disk layout through open_lth.foundations.paths):

jobs/          running jobs: sweeps of main.py runs (locally, on Slurm, in packs), what a
               sweep or a results root holds (`main.py status`), the data they read
               (prepare_data.py, synthetic_imagenet.py)
analysis/      reading what the jobs wrote: results roots -> pandas, figures, tables and
               `main.py report`

The studies, scripts a user runs by path (`python experiments/<study>.py`), stay here at
the top: each is a list of runs handed to jobs/sweep.py, so they import jobs/ and nothing
imports them but other studies.
lenet_fisher_vs_magnitude.py, resnet_fisher_vs_magnitude.py, instability.py,
pruning_at_init.py, imagenet_lottery.py
results.ipynb  a notebook that shows a results root's figures and tables (analysis/)
colab.ipynb    the quick study on a Colab GPU, then its figures

The tests' hand-written results root is tests/synthetic.py; tests/test_layout.py holds the
arrows between the rooms.
"""

if __name__ == "experiments":  # by its plain name: see open_lth/foundations/plain_names.py
    from open_lth.foundations.plain_names import step_aside

    step_aside(__name__, __file__)
