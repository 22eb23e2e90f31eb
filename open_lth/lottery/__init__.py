"""The lottery: the levels of an IMP run, `main.py lottery` and `main.py pack`, the
strategy base class, and the branches that hang off a level."""
