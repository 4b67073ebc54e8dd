"""Using trained encoders: loading weights, exporting a model folder,
converting other checkpoints, inference and feature extraction."""
