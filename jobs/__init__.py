"""Thin entrypoints: the `restore` console script and `ray job submit` targets."""
