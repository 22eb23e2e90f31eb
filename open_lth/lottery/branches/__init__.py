"""The lottery branches; each registers itself in `open_lth.foundations.registries.branches`
(main.load_plugins imports them)."""
