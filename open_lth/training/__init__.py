"""Training: device data, the trainer and its step, checkpoints, evaluation, the
schedule, stacked copies, interpolation, and `main.py train`. Imports only the foundations."""
