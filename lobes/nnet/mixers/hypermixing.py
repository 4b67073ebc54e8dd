"""HyperMixing: token mixing by a hypernetwork-generated MLP, linear in T.

Written from Mai, Pannatier, Fehr, Chen, Marelli, Fleuret and Henderson,
"HyperMixer: An MLP-based Low Cost Alternative to Transformers" (ACL 2023),
multi-head as in HyperConformer (Mai et al., Interspeech 2023). For each head,
a hypernetwork maps every frame (plus its position) to one row of two weight
matrices W1, W2 (T x k); the frames are then mixed by the MLP
``Y = W2 GELU(W1^T X)`` across time, then layer-normalised.

This reuses SpeechBrain's ``HyperNetwork`` (same parameters and state-dict
keys as ``speechbrain.nnet.hypermixing.HyperMixing``) but fixes two problems
of SpeechBrain 1.1.2's module for long inputs: it allocates dummy attention
weights ``zeros(B, T, T)`` at every call (quadratic memory in a mixer whose
point is linear cost), and its positional table stops at 3000 frames
(2 minutes at 40 ms). Here positions are computed for any length and only the
(B, T, D) output is returned.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
from speechbrain.nnet.hypermixing import HyperNetwork
from torch import nn

from lobes.nnet.mixers.common import sinusoidal_positions


class HyperMixing(nn.Module):
    """Multi-head HyperMixing token mixer (linear in T).

    For head h with input slice X_h (T x D/H), the hypernetwork (SpeechBrain's
    ``HyperNetwork``, under ``hyper.``: per head, two MLPs D/H -> D/H -> k)
    maps the h-th slice of each frame x_t + pos_t to row t of W1_h and W2_h
    (T x k); the output is
    ``LayerNorm(concat_h(W2_h GELU(W1_h^T X_h)))``, with padded rows of X, W1
    and W2 zeroed. Its numbers equal those of SpeechBrain's ``HyperMixing``
    with the same weights (tested); only the (B, T, T) dummy attention weights
    and the 3000-frame position limit are gone.

    Arguments
    ---------
    d_model : int
        Input and output size D (divisible by ``nhead``).
    nhead : int
        Number of parallel token-mixing MLPs H.
    hypernet_size : int
        Hidden size k of the token-mixing MLP (split over heads unless
        ``fix_tm_hidden_size``).
    tied : bool
        Tie W1 and W2.
    fix_tm_hidden_size : bool
        Give each head the full ``hypernet_size`` hidden units.

    Example
    -------
    >>> mixer = HyperMixing(16, nhead=4, hypernet_size=32)
    >>> x = torch.rand(2, 9, 16)
    >>> mixer(x).shape
    torch.Size([2, 9, 16])
    """

    def __init__(
        self,
        d_model,
        nhead=8,
        hypernet_size=2048,
        tied=False,
        fix_tm_hidden_size=False,
    ):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(
                f"HyperMixing: d_model={d_model} is not divisible by nhead={nhead}"
            )
        self.d_model = d_model
        self.nhead = nhead
        self.hyper = HyperNetwork(
            d_model,
            hypernet_size,
            tied=tied,
            num_heads=nhead,
            keep_output_size=fix_tm_hidden_size,
        )
        self.activation = nn.GELU()
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes the frames of each utterance.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, D) input frames.
        pad_mask : torch.Tensor, optional
            (B, T) bool, True on padded frames: they are zeroed in the input
            and in the generated W1, W2, so they cannot reach real frames.
        pos_emb : torch.Tensor, optional
            Ignored: the module adds its own sine positions to the
            hypernetwork input.

        Returns
        -------
        torch.Tensor
            (B, T, D); padded frames do not reach real ones (on padded
            frames: the LayerNorm of zeros, as SpeechBrain's module).
        """
        B, T, D = x.shape
        H = self.nhead
        valid = None
        if pad_mask is not None:
            valid = (~pad_mask).unsqueeze(-1).to(x.dtype)
            x = x * valid
        hyper_in = x + sinusoidal_positions(T, D, device=x.device, dtype=x.dtype)
        W1, W2 = self.hyper(hyper_in)  # (B, H, T, k)
        if valid is not None:
            W1 = W1 * valid.unsqueeze(1)
            W2 = W2 * valid.unsqueeze(1)
        out = x.transpose(1, 2).reshape(B * H, D // H, T)
        hidden = self.activation(torch.bmm(out, W1.reshape(B * H, T, -1)))
        out = torch.bmm(hidden, W2.reshape(B * H, T, -1).transpose(1, 2))
        out = self.layer_norm(out.reshape(B, D, T).transpose(1, 2))
        return out
