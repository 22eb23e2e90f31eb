"""The core of the framework, in three rooms: foundations/ (hparams, run descriptions,
registries, the run store), training/ (data, the trainer, `main.py train`) and lottery/
(levels, `main.py lottery` and `pack`, branches). It knows no concrete model, data set or
strategy: those register themselves in `open_lth.foundations.registries` when main.py
imports them."""
