"""The core of the framework: hparams, run descriptions, registries, the run store,
the training loop and the runners. It knows no concrete model, data set or strategy;
those join through the registries in `open_lth.registries`."""
