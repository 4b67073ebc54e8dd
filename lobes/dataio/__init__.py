"""Data: audio reading and checks, LibriSpeech preparation, the pretraining
and ASR dataset pipelines, batching and tokenisers."""
