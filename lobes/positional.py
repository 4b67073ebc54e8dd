"""Absolute sine/cosine positional encodings, computed for any length.

The encoding of Vaswani et al., "Attention Is All You Need" (NeurIPS 2017),
laid out as SpeechBrain's ``PositionalEncoding`` (sines on even features,
cosines on odd ones) but with no maximum length: a 5-minute input at 40 ms
frames (7500 positions) needs no table.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
from torch import nn


def sinusoidal_positions(length, d_model, device=None, dtype=None):
    """The Transformer's sine/cosine positions (Vaswani et al., 2017).

    ``pe[t, 2i] = sin(t / 10000^(2i/d))`` and ``pe[t, 2i+1] = cos(...)``,
    computed on the fly (no maximum length).

    Arguments
    ---------
    length : int
        Number of positions T.
    d_model : int
        Feature size D.
    device, dtype : optional
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        (1, T, D).

    Example
    -------
    >>> sinusoidal_positions(3, 4)[0, 0]
    tensor([0., 1., 0., 1.])
    """
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
        * (-math.log(10000.0) / d_model)
    )
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)[:, : d_model // 2]
    return pe.unsqueeze(0).to(dtype or torch.float32)


class AbsolutePositionalEncoding(nn.Module):
    """Adds ``sinusoidal_positions`` to (B, T, D) inputs, for any T.

    Arguments
    ---------
    d_model : int
        Feature size D of the inputs.

    Example
    -------
    >>> AbsolutePositionalEncoding(8)(torch.zeros(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model

    def forward(self, x):
        """Returns x + positions."""
        return x + sinusoidal_positions(
            x.shape[1], self.d_model, device=x.device, dtype=x.dtype
        )
