"""Running jobs: the runs of main.py that a study asks for, and what they have done.

sweep.py          runs of main.py in phases: --dry_run, --print_commands, --jobs=N
slurm.py          the same phases as Slurm jobs (submitit); packs.py groups runs into packs
status.py         `main.py status`: what the sweeps on a results root did, from their record
folder_status.py  `main.py status` on a root that no sweep started: read from its folders
prepare_data.py   ImageNet's folders packed into shards, the data a job streams
synthetic_imagenet.py   a small ImageNet-shaped folder to try that pipeline (and the tests')

Arrows: jobs import the core and, of analysis/, only analysis/load.py (the one reader of a
results root, which `main.py status` needs); never the figures, the report or a study.
"""
