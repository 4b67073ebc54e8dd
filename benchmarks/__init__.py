"""The efficiency benchmarks (``python -m benchmarks.efficiency``,
``python -m benchmarks.vs_speechbrain``, run from the repository root)."""
