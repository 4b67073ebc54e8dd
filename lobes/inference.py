"""Compatibility name for model folders exported before the package was
grouped by stage: their ``hyperparams.yaml`` loads weights with
``!name:lobes.inference.load_encoder_checkpoint``. New code imports
:mod:`lobes.deploy.inference`."""

from lobes.deploy.inference import BestRQEncoder, load_encoder_checkpoint

__all__ = ["BestRQEncoder", "load_encoder_checkpoint"]
