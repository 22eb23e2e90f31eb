"""The foundations: hparams, steps, run descriptions and their names, registries, the run
store, masks, processes under torchrun, and the base classes of the extension points. They
import nothing of the other rooms."""
