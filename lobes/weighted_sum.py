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

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from torch import nn


@register_checkpoint_hooks
class WeightedLayerSum(nn.Module):
    """Frozen encoder -> softmax(w)-weighted sum of its L+1 hidden states.

    Arguments
    ---------
    encoder : lobes.encoder.ConformerEncoder
        The pretrained encoder (frozen here, in place).
    normalizer : torch.nn.Module, optional
        The pretraining's feature normaliser (e.g. SpeechBrain's
        ``InputNormalization`` with its global statistics), frozen too: its
        statistics are never updated by the probe's data.
    layernorm : bool
        Layer-normalise each hidden state (no affine) before the sum.

    Example
    -------
    >>> from lobes.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=2, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> probe_input = WeightedLayerSum(enc)
    >>> probe_input(torch.rand(2, 40, 80), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 10, 16])
    >>> [n for n, p in probe_input.named_parameters() if p.requires_grad]
    ['weights']

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

    def __init__(self, encoder, normalizer=None, layernorm=False):
        super().__init__()
        self.encoder = encoder
        self.normalizer = normalizer
        for param in self.frozen_parameters():
            param.requires_grad_(False)
        self._freeze_modes()
        self.layernorm = layernorm
        # Zero init: uniform weights 1/(L+1) at the start, as in MP3S.
        self.weights = nn.Parameter(torch.zeros(encoder.num_hidden_states))

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
        """Maps fbank (B, T, n_mels) to the weighted sum (B, T/4, D)."""
        with torch.no_grad():
            if self.normalizer is not None:
                feats = self.normalizer(feats, lengths)
            _, hidden = self.encoder(feats, lengths, return_hidden=True)
        hidden = torch.stack(hidden, dim=0)
        if self.layernorm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        weights = self.layer_weights().to(hidden.dtype)
        return torch.einsum("l,lbtd->btd", weights, hidden)

    @mark_as_saver
    def save_weights(self, path):
        """Checkpoint hook: saves the layer weights only."""
        torch.save({"weights": self.weights.detach().cpu()}, path)

    @mark_as_loader
    def load_weights(self, path, end_of_epoch=False):
        """Checkpoint hook: restores the layer weights saved at ``path``."""
        del end_of_epoch
        weights = torch.load(path, map_location="cpu")["weights"]
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"{path} holds {weights.numel()} layer weights but this "
                f"encoder has {self.weights.numel()} hidden states: the "
                "checkpoint belongs to a probe on another encoder."
            )
        with torch.no_grad():
            self.weights.copy_(weights)
