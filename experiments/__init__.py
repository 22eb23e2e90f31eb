"""The study's experiments as batch scripts, loaders of run directories, and plots."""
