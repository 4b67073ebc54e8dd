"""Multi-head self-attention token mixers: the quadratic baselines.

Two baselines the linear mixers are compared with:

* ``RelPosMHSA``: the paper's MHSA, Transformer-XL relative positional
  attention (SpeechBrain's ``RelPosMHAXL``), as used by SpeechBrain's BEST-RQ
  Conformer.
* ``SDPAMHSA``: plain multi-head attention through PyTorch's fused
  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory
  efficient kernels on CUDA), used with absolute sine positions. This is what a
  user would pick today, so the linear mixers must also be measured against it.

Both follow the project's mixer interface: ``forward(x, pad_mask, pos_emb)``
with ``x`` of shape (B, T, D), ``pad_mask`` a bool (B, T) tensor that is True
on padded frames, and an output of shape (B, T, D) whose real frames padding never
reaches.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.nnet.attention import RelPosEncXL, RelPosMHAXL
from torch import nn



class RelPosMHSA(nn.Module):
    """Relative-position multi-head self-attention (Transformer-XL style).

    A thin wrapper on SpeechBrain's ``RelPosMHAXL`` that gives it the mixer
    interface. It needs the relative positional embedding of the sequence,
    which the Conformer computes once per forward with ``make_pos_emb`` and
    passes to every layer.

    Arguments
    ---------
    d_model : int
        Feature size D.
    nhead : int
        Number of attention heads.
    dropout : float
        Dropout on the attention weights.

    Example
    -------
    >>> mixer = RelPosMHSA(16, nhead=4)
    >>> x = torch.rand(2, 10, 16)
    >>> pos = mixer.make_pos_emb(x)
    >>> mixer(x, pos_emb=pos).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, d_model, nhead=8, dropout=0.0):
        super().__init__()
        self.attn = RelPosMHAXL(d_model, nhead, dropout=dropout)
        self.pos_enc = RelPosEncXL(d_model)

    def make_pos_emb(self, x):
        """Relative positional embedding (1, 2T-1, D) for ``x`` (B, T, D)."""
        return self.pos_enc(x).to(x.dtype)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes the frames of ``x`` (B, T, D); returns (B, T, D)."""
        if pos_emb is None:
            pos_emb = self.make_pos_emb(x)
        out = self.attn(
            x,
            x,
            x,
            pos_embs=pos_emb,
            key_padding_mask=pad_mask,
            return_attn_weights=False,
        )
        return out


class SDPAMHSA(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Arguments
    ---------
    d_model : int
        Feature size D (divisible by ``nhead``).
    nhead : int
        Number of attention heads.
    dropout : float
        Dropout on the attention weights (training only).

    Example
    -------
    >>> mixer = SDPAMHSA(16, nhead=4)
    >>> mixer(torch.rand(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, d_model, nhead=8, dropout=0.0):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(
                f"SDPAMHSA: d_model={d_model} is not divisible by nhead={nhead}"
            )
        self.nhead = nhead
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes the frames of ``x`` (B, T, D); returns (B, T, D)."""
        B, T, D = x.shape
        q, k, v = (
            self.qkv(x)
            .view(B, T, 3, self.nhead, D // self.nhead)
            .permute(2, 0, 3, 1, 4)
        )
        attn_mask = None
        if pad_mask is not None:
            # True = may attend; (B, 1, 1, T) broadcast over heads and queries.
            attn_mask = (~pad_mask)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))
