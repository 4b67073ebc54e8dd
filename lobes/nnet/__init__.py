"""Networks: token mixers, front-end, Conformer encoder, BEST-RQ pieces and
the weighted layer sum."""
