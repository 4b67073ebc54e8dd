"""SpeechBrain ``Brain`` classes: BEST-RQ pretraining, frozen-encoder
probing, fine-tuning, CTC decoding, and the mixins they share."""
