"""Linear-complexity BEST-RQ lobes for SpeechBrain.

Token mixers (one file each), the Conformer that takes any of them, the
BEST-RQ quantiser and masking, the frozen-encoder weighted layer sum used
for MP3S probing and the BEST-RQ ``Brain`` class.
"""
