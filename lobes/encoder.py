"""Compatibility name for model folders exported before the package was
grouped by stage: their ``hyperparams.yaml`` builds the encoder with
``!apply:lobes.encoder.ConformerEncoder.from_config``. New code imports
:mod:`lobes.nnet.encoder`."""

from lobes.nnet.encoder import ConformerEncoder

__all__ = ["ConformerEncoder"]
