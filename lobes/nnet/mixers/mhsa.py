"""Multi-head self-attention token mixers: the quadratic baselines.

Two baselines the linear mixers are compared with:

* ``RelPosMHSA``: the paper's MHSA, Transformer-XL relative positional
  attention, as used by SpeechBrain's BEST-RQ Conformer: the numbers and
  parameters of SpeechBrain's ``RelPosMHAXL``, computed through the fused
  ``scaled_dot_product_attention`` with the positional scores as its bias.
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


def rel_shift_window(scores, rows, length):
    """Aligns Transformer-XL position scores with the keys, as a view.

    ``scores[..., r, w]`` scores query ``r`` of a block of ``rows`` queries
    against the relative position of window index ``w``, where the window
    holds the ``length + rows - 1`` positions that the block needs, from the
    farthest past of its last query to the farthest future of its first one
    (for a whole sequence, ``rows = length`` and the window is all
    ``2 * length - 1`` positions, as in ``RelPosMHAXL``). Query ``r`` and key
    ``j`` are then at window index ``rows - 1 - r + j``: this returns
    ``out[..., r, j] = scores[..., r, rows - 1 - r + j]`` without a copy (the
    rows of ``out`` are the flat memory of ``scores`` read with a stride of
    one element less than its rows), instead of SpeechBrain's ``rel_shift``,
    which pads (a copy) and slices.

    Arguments
    ---------
    scores : torch.Tensor
        (..., rows, length + rows - 1), contiguous.
    rows : int
        Number of queries in the block.
    length : int
        Number of keys T.

    Returns
    -------
    torch.Tensor
        (..., rows, length), a view of ``scores``.

    Example
    -------
    >>> s = torch.arange(6.0).view(2, 3)  # 2 queries, 2 keys: window of 3
    >>> rel_shift_window(s, 2, 2)
    tensor([[1., 2.],
            [3., 4.]])
    """
    width = length + rows - 1
    if scores.shape[-2:] != (rows, width):
        raise ValueError(f"scores {tuple(scores.shape)}: expected (..., {rows}, {width})")
    if rows == 1:
        return scores
    flat = scores.flatten(start_dim=-2)[..., rows - 1 : rows - 1 + rows * (width - 1)]
    return flat.unflatten(-1, (rows, width - 1))[..., :length]


class RelPosMHSA(nn.Module):
    """Relative-position multi-head self-attention (Transformer-XL style).

    Computes exactly what SpeechBrain's ``RelPosMHAXL`` computes for
    self-attention (same parameters, held by a ``RelPosMHAXL`` in ``attn`` so
    that the state-dict keys are its own), faster and in less memory:

    * content scores, softmax and the weighted sum of values run in one fused
      ``F.scaled_dot_product_attention`` (no T x T score, weight or mask
      tensor is written out on CPU);
    * the positional scores ("matrix_bd") enter it as an additive float bias:
      for each block of ``query_chunk`` queries, one matmul against only the
      ``T + rows - 1`` relative positions the block needs, aligned with the
      keys by a strided view (``rel_shift_window``) instead of SpeechBrain's
      pad-and-slice ``rel_shift`` over all 2T - 1 positions;
    * padding enters the same bias as ``-inf`` on padded keys, where
      SpeechBrain fills the scores, softmaxes in float32 and fills again.

    Dropout is applied to the attention weights in training, as in
    ``RelPosMHAXL``. The scale is SpeechBrain's, 1 / sqrt(d_model).

    Arguments
    ---------
    d_model : int
        Feature size D.
    nhead : int
        Number of attention heads.
    dropout : float
        Dropout on the attention weights.
    query_chunk : int
        Most queries per block: memory is O(B * nhead * query_chunk * T).

    Example
    -------
    >>> mixer = RelPosMHSA(16, nhead=4).eval()
    >>> x = torch.rand(2, 10, 16)
    >>> pos = mixer.make_pos_emb(x)
    >>> out = mixer(x, pos_emb=pos)
    >>> out.shape
    torch.Size([2, 10, 16])
    >>> ref, _ = mixer.attn(x, x, x, pos_embs=pos)  # SpeechBrain's forward
    >>> torch.allclose(out, ref, atol=1e-6)
    True
    """

    def __init__(self, d_model, nhead=8, dropout=0.0, query_chunk=256):
        super().__init__()
        self.attn = RelPosMHAXL(d_model, nhead, dropout=dropout)
        self.pos_enc = RelPosEncXL(d_model)
        self.query_chunk = query_chunk

    def make_pos_emb(self, x):
        """Relative positional embedding (1, 2T-1, D) for ``x`` (B, T, D)."""
        return self.pos_enc(x).to(x.dtype)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes the frames of ``x`` (B, T, D); returns (B, T, D).

        Arguments
        ---------
        x : torch.Tensor
            (B, T, D) frames.
        pad_mask : torch.Tensor, optional
            (B, T) bool, True on padded frames (never attended to).
        pos_emb : torch.Tensor, optional
            (1, 2T-1, D) from ``make_pos_emb`` (computed here if None).

        Returns
        -------
        torch.Tensor
            (B, T, D); padded frames are never attended to (their own
            outputs are zeroed by the encoder layer).
        """
        if pos_emb is None:
            pos_emb = self.make_pos_emb(x)
        attn = self.attn
        B, T, D = x.shape
        H, hd = attn.num_heads, attn.head_dim
        # One projection; SpeechBrain's layout is (head, [q | k | v]).
        q, k, v = (
            F.linear(x, attn.in_proj_weight).view(B, T, H, 3 * hd).transpose(1, 2)
        ).split(hd, dim=-1)  # (B, H, T, hd) views
        dtype = q.dtype  # the autocast dtype, if any
        pos = attn.linear_pos(pos_emb)  # (1, 2T-1, D)
        pos = pos.view(2 * T - 1, H, hd).permute(1, 2, 0)  # (H, hd, 2T-1)
        q_u = q + attn.pos_bias_u.view(H, 1, hd).to(dtype)
        q_v = (q + attn.pos_bias_v.view(H, 1, hd).to(dtype)) * attn.scale
        pad_bias = None
        # On CPU a batch without padding skips the masking (the check would
        # cost a device synchronisation per layer on CUDA).
        if pad_mask is not None and (pad_mask.device.type != "cpu" or pad_mask.any()):
            pad_bias = pad_mask[:, None, None, :]  # (B, 1, 1, T)
        dropout = attn.dropout if self.training else 0.0
        outs = []
        for start in range(0, T, self.query_chunk):
            rows = min(self.query_chunk, T - start)
            # Positions T-1-i+j for queries i of the block, keys j.
            window = pos[..., T - start - rows : 2 * T - 1 - start]
            bias = rel_shift_window(
                torch.matmul(q_v[:, :, start : start + rows], window), rows, T
            )
            if pad_bias is not None:  # in place: bias is this block's own scores
                bias = bias.masked_fill_(pad_bias, float("-inf"))
            outs.append(
                F.scaled_dot_product_attention(
                    q_u[:, :, start : start + rows],
                    k,
                    v,
                    attn_mask=bias,
                    dropout_p=dropout,
                    scale=attn.scale,
                )
            )
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        out = attn.out_proj(out.transpose(1, 2).reshape(B, T, D))
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
