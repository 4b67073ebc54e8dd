"""Frozen BEST-RQ encoder with a learned softmax-weighted sum of its layers.

The MP3S probing protocol (Zaiem et al., 2023): the self-supervised encoder
is frozen and a downstream probe reads a learned convex combination of *all*
its hidden states (the L+1 states: the input of the first Conformer layer and
the output of every layer). SpeechBrain's ``WeightedSSLModel`` only wraps
Hugging Face models, hence this module for our encoders.

Freezing is real, not a flag: the encoder's parameters have
``requires_grad=False``, it is always in eval mode (no dropout, no layerdrop,
even when the probe calls ``.train()``) and it runs under ``torch.no_grad``,
so no activation is kept for a backward pass (since SpeechBrain 1.0.3 a probe
otherwise back-propagates into the SSL model).

The same module gives the two baselines that say whether pretraining helped
(``encoder_init`` in every probe YAML; ``load_pretrained`` reads the
checkpoint accordingly):

* ``pretrained``: the checkpoint's encoder weights and feature statistics;
* ``random``: the same architecture left at its seeded random initialisation
  (the probe's ``seed``), with the checkpoint's feature statistics;
* ``fbank``: no encoder at all: the normalised fbank features (checkpoint's
  statistics), ``stride`` frames stacked per vector so that the probe sees
  the encoder's frame rate (4 x 80 = 320 values per 40 ms), the only state
  of the "layer sum".

A probe trained on each, same seed, same epochs, gives the three columns of
the demo table (``tools/run_probes.sh``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.logger import get_logger
from torch import nn

from lobes.utils.safe_io import load_tensors

logger = get_logger(__name__)

ENCODER_INITS = ("pretrained", "random", "fbank")


def check_encoder_init(encoder_init):
    """Refuses an unknown ``encoder_init`` with the valid values.

    Example
    -------
    >>> check_encoder_init("random")
    >>> check_encoder_init("scratch")
    Traceback (most recent call last):
    ...
    ValueError: encoder_init: 'scratch'; use pretrained (the checkpoint's weights), random ...
    """
    if encoder_init not in ENCODER_INITS:
        raise ValueError(
            f"encoder_init: {encoder_init!r}; use pretrained (the checkpoint's "
            "weights), random (the same encoder at its random initialisation) "
            "or fbank (the normalised features alone, no encoder)."
        )


def probe_input_size(encoder, encoder_init="pretrained"):
    """Width of the vectors a probe reads: the encoder's ``d_model``, or
    ``stride x n_mels`` stacked fbank values with ``encoder_init: fbank``
    (the ``d_model`` of the probe YAMLs).

    Example
    -------
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> probe_input_size(enc), probe_input_size(enc, "fbank")
    (16, 320)
    """
    check_encoder_init(encoder_init)
    if encoder_init == "fbank":
        return encoder.frontend.downsampling * encoder.config["n_mels"]
    return encoder.d_model


@register_checkpoint_hooks
class WeightedLayerSum(nn.Module):
    """Frozen encoder -> softmax(w)-weighted sum of its L+1 hidden states.

    Arguments
    ---------
    encoder : lobes.nnet.encoder.ConformerEncoder
        The pretrained encoder (frozen here, in place).
    normalizer : torch.nn.Module, optional
        The pretraining's feature normaliser
        (``lobes.nnet.normalization.FeatureNormalizer``, which
        ``load_pretrained`` gives the pretraining's method and statistics),
        frozen too: its statistics are never updated by the probe's data.
    layernorm : bool
        Layer-normalise each hidden state (no affine) before the sum.
    encoder_init : str
        ``pretrained`` (default), ``random`` or ``fbank``: what the probe
        reads (see the module docstring). With ``fbank`` the encoder is kept
        only for its frame rate and is never run.

    Example
    -------
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=2, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> probe_input = WeightedLayerSum(enc)
    >>> probe_input(torch.rand(2, 40, 80), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 10, 16])
    >>> [n for n, p in probe_input.named_parameters() if p.requires_grad]
    ['weights']

    The fbank baseline: 4 normalised frames stacked per encoder frame, zero
    on padding.

    >>> fbank_input = WeightedLayerSum(enc, encoder_init="fbank")
    >>> out = fbank_input(torch.rand(2, 40, 80), torch.tensor([1.0, 0.5]))
    >>> out.shape, bool(out[1, 5:].eq(0).all()), fbank_input.weights.numel()
    (torch.Size([2, 10, 320]), True, 1)

    As a ``Checkpointer`` recoverable it saves only the layer weights (the
    frozen encoder comes from ``pretrained_path``, not from each checkpoint):

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "weighted_ssl.ckpt")
    >>> with torch.no_grad():
    ...     _ = probe_input.weights.fill_(0.5)
    >>> probe_input.save_weights(path)
    >>> list(torch.load(path))
    ['weights']
    >>> with torch.no_grad():
    ...     _ = probe_input.weights.zero_()
    >>> probe_input.load_weights(path)
    >>> probe_input.weights.tolist()
    [0.5, 0.5, 0.5]
    """

    def __init__(self, encoder, normalizer=None, layernorm=False,
                 encoder_init="pretrained"):
        super().__init__()
        check_encoder_init(encoder_init)
        self.encoder = encoder
        self.normalizer = normalizer
        self.encoder_init = encoder_init
        for param in self.frozen_parameters():
            param.requires_grad_(False)
        self._freeze_modes()
        self.layernorm = layernorm
        self.output_size = probe_input_size(encoder, encoder_init)
        # Zero init: uniform weights 1/(L+1) at the start, as in MP3S.
        n_states = 1 if encoder_init == "fbank" else encoder.num_hidden_states
        self.weights = nn.Parameter(torch.zeros(n_states))

    def load_pretrained(self, path):
        """Reads the pretraining checkpoint ``path`` (any form of
        ``lobes.deploy.loading.resolve_checkpoint``) as ``encoder_init`` says:
        encoder weights and feature statistics (``pretrained``), or the
        statistics alone (``random``, ``fbank``). Logs what the probe reads.
        """
        from lobes.deploy.loading import load_pretrained

        encoder = self.encoder if self.encoder_init == "pretrained" else None
        load_pretrained(path, encoder, self.normalizer)
        what = {
            "pretrained": "the pretrained encoder",
            "random": "the encoder at its random initialisation (not loaded)",
            "fbank": "the normalised fbank features (no encoder)",
        }[self.encoder_init]
        logger.info(
            f"Probe input ({self.encoder_init}): {what}, feature statistics "
            f"of {path}; {self.output_size} values per frame"
        )

    def frozen_parameters(self):
        """Parameters of the encoder and normaliser (never trained here)."""
        yield from self.encoder.parameters()
        if self.normalizer is not None:
            yield from self.normalizer.parameters()

    def _freeze_modes(self):
        self.encoder.eval()
        if self.normalizer is not None:
            self.normalizer.eval()

    def train(self, mode=True):
        """Sets the train mode of the weights; encoder and normaliser stay in
        eval mode (no dropout, no layerdrop, no statistics update)."""
        super().train(mode)
        self._freeze_modes()
        return self

    def layer_weights(self):
        """The current softmax weights, (L+1,)."""
        return F.softmax(self.weights, dim=0)

    def forward(self, feats, lengths=None):
        """Maps fbank (B, T, n_mels) to the weighted sum (B, T/4, D) (with
        ``fbank``: the stacked features, (B, T/4, 4 * n_mels))."""
        with torch.no_grad():
            if self.normalizer is not None:
                feats = self.normalizer(feats, lengths)
            if self.encoder_init == "fbank":
                return self._stacked_fbank(feats, lengths)
            _, hidden = self.encoder(feats, lengths, return_hidden=True)
        hidden = torch.stack(hidden, dim=0)
        if self.layernorm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        weights = self.layer_weights().to(hidden.dtype)
        return torch.einsum("l,lbtd->btd", weights, hidden)

    def _stacked_fbank(self, feats, lengths):
        """(B, T, F) -> (B, ceil(T / stride), stride * F), zero beyond each
        utterance's length (as the encoder's outputs)."""
        from lobes.nnet.bestrq import stack_frames

        B, T, _ = feats.shape
        if lengths is not None:
            frames = torch.round(lengths * T).long().clamp(1, T)
            feats = feats * length_to_mask(frames, T).bool().unsqueeze(-1)
        return stack_frames(feats, self.encoder.frontend.downsampling)

    @mark_as_saver
    def save_weights(self, path):
        """Checkpoint hook: saves the layer weights only."""
        torch.save({"weights": self.weights.detach().cpu()}, path)

    @mark_as_loader
    def load_weights(self, path, end_of_epoch=False):
        """Checkpoint hook: restores the layer weights saved at ``path``."""
        del end_of_epoch
        weights = load_tensors(path, what="layer weights file")["weights"]
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"{path} holds {weights.numel()} layer weights but this "
                f"encoder has {self.weights.numel()} hidden states: the "
                "checkpoint belongs to a probe on another encoder."
            )
        with torch.no_grad():
            self.weights.copy_(weights)
