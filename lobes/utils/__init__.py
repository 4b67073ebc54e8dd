"""Checkpointing (atomic saves, random state) and training-run curves."""
