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
(2 minutes at 40 ms). Here positions are computed for any length (and kept
for the last few lengths) and only the (B, T, D) output is returned. The
hypernetwork's parameters are applied directly (``HyperMixing._generate``):
the same numbers as its ``forward`` (tested) in fewer passes over memory,
the biases inside the products, no separate masking of W1 and W2.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.nnet.hypermixing import HyperNetwork
from torch import nn

from lobes.nnet.mixers.common import cached_sinusoidal_positions


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
        H, dh = self.nhead, D // self.nhead
        if pad_mask is not None:
            x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        pos = cached_sinusoidal_positions(T, D, device=x.device, dtype=x.dtype)
        W1, W2 = self._generate(x + pos)  # (H, B, T, k)
        # Padded rows of W1 meet zero frames of x: they add nothing. Those of
        # W2 only reach padded outputs, zeroed below (SpeechBrain zeroes the
        # rows of W1 and W2 instead: the same numbers, two passes more).
        xt = x.view(B, T, H, dh).permute(2, 0, 3, 1)  # (H, B, dh, T), a view
        hidden = self._gelu(torch.matmul(xt, W1))  # (H, B, dh, k)
        out = torch.matmul(hidden, W2.transpose(-1, -2))  # (H, B, dh, T)
        out = out.permute(1, 3, 0, 2).reshape(B, T, D)  # (B, T, D) (a view for B = 1)
        if pad_mask is not None:
            out = out.masked_fill_(pad_mask.unsqueeze(-1), 0.0)
        return self.layer_norm(out)

    @staticmethod
    def _gelu(h):
        """GELU (the exact one, as ``self.activation`` and SpeechBrain's
        hypernetwork), in place where no gradient is needed."""
        if torch.is_grad_enabled() and h.requires_grad:
            return F.gelu(h)
        return torch.ops.aten.gelu_(h)

    def _generate(self, hyper_in):
        """W1 and W2 (H, B, T, k) of the hypernetwork for ``hyper_in``
        (B, T, D): the numbers of SpeechBrain's ``HyperNetwork`` (per head,
        ``fc2(GELU(fc1(x_h)))``), computed from the heads' strided views
        with the biases inside the products (``baddbmm``) and both
        generators' first layers in one product."""
        B, T, D = hyper_in.shape
        H = self.nhead
        gens = [self.hyper.w1_gen]
        if not self.hyper.tied:
            gens.append(self.hyper.w2_gen)
        heads = hyper_in.reshape(B * T, H, D // H).transpose(0, 1)  # (H, BT, dh)
        w1 = torch.cat([g.fc1_weights for g in gens], 1)  # (H, n * hidden, dh)
        b1 = torch.cat([g.fc1_biases for g in gens], 1)
        hidden = self._gelu(torch.baddbmm(b1.unsqueeze(1), heads, w1.transpose(1, 2)))
        size = gens[0].fc1_weights.shape[1]
        W = [
            torch.baddbmm(
                g.fc2_biases.unsqueeze(1),
                hidden[..., i * size:(i + 1) * size],
                g.fc2_weights.transpose(1, 2),
            ).view(H, B, T, -1)
            for i, g in enumerate(gens)
        ]
        return W[0], W[-1]
