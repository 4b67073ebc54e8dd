"""Fastformer: additive attention, a linear-complexity token mixer.

Written from Wu, Wu, Qi, Huang and Xie, "Fastformer: Additive Attention Can
Be All You Need" (arXiv 2108.09084, 2021). Per head h, with d_h = D / H and
q_i, k_i, v_i the head-h slices of the projected frame i:

    alpha_i = softmax_i(w_q . q_i / sqrt(d_h))        over valid frames i
    q_g     = sum_i alpha_i q_i                       global query
    p_i     = q_g * k_i                               element-wise
    beta_i  = softmax_i(w_k . p_i / sqrt(d_h))        over valid frames i
    k_g     = sum_i beta_i p_i                        global key
    u_i     = k_g * v_i
    r_i     = W_r u_i + q_i                           output (query residual)

The heads of u are concatenated before W_r. Fastformer shares the query and
value transformations (the paper's query-value parameter sharing, see its
"Influence of Parameter Sharing" study; also the authors' released code and
the BEST-RQ study this repository reproduces, whose 616 width assumes it), so
by default the values are the queries (v_i = q_i): three D x D projections
(query, key, output). ``share_query_value=False`` adds a separate value
projection (four D x D projections).

Every step is a per-frame operation or a softmax pooling over time: time and
memory are linear in T (no T x T tensor). Padded frames get exactly zero
weight in both poolings, so they cannot change the outputs on real frames.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
from torch import nn

from lobes.mixers.common import masked_softmax_pool, zero_padded


class Fastformer(nn.Module):
    """Fastformer additive-attention token mixer (linear in T).

    Computes, per head, a global query by softmax pooling of the queries, a
    global key by softmax pooling of the global-query-modulated keys, then
    modulates each frame's value by the global key, projects it and adds the
    query (see the module docstring for the equations).

    Arguments
    ---------
    d_model : int
        Input and output size D (divisible by ``nhead``).
    nhead : int
        Number of heads H.
    dropout : float
        Dropout on the projected output W_r u_i (before the query residual).
    share_query_value : bool
        If True (default, the paper's parameter sharing), the values are the
        queries. If False, a separate ``v_proj`` linear layer gives the values.

    Example
    -------
    >>> mixer = Fastformer(16, nhead=4)
    >>> x = torch.rand(2, 9, 16)
    >>> pad_mask = torch.arange(9)[None, :] >= torch.tensor([[9], [6]])
    >>> y = mixer(x, pad_mask)
    >>> y.shape
    torch.Size([2, 9, 16])
    >>> bool((y[1, 6:] == 0).all())
    True
    """

    def __init__(self, d_model, nhead=8, dropout=0.0, share_query_value=True):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(
                f"Fastformer: d_model={d_model} is not divisible by nhead={nhead}"
            )
        self.d_model = d_model
        self.nhead = nhead
        self.d_head = d_model // nhead
        # Query and key projections, fused: rows [:D] give q, rows [D:] give k.
        self.qk = nn.Linear(d_model, 2 * d_model)
        self.v_proj = None if share_query_value else nn.Linear(d_model, d_model)
        # One scoring vector per head for the query and the key poolings.
        self.w_q = nn.Parameter(torch.empty(nhead, self.d_head))
        self.w_k = nn.Parameter(torch.empty(nhead, self.d_head))
        nn.init.normal_(self.w_q, std=self.d_head**-0.5)
        nn.init.normal_(self.w_k, std=self.d_head**-0.5)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes the frames of each utterance.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, D) input frames.
        pad_mask : torch.Tensor, optional
            (B, T) bool, True on padded frames.
        pos_emb : torch.Tensor, optional
            Ignored (interface compatibility).

        Returns
        -------
        torch.Tensor
            (B, T, D), zero on padded frames.
        """
        B, T, D = x.shape
        H, dh = self.nhead, self.d_head
        q, k = self.qk(x).view(B, T, 2, H, dh).unbind(2)  # (B, T, H, dh)
        v = q if self.v_proj is None else self.v_proj(x).view(B, T, H, dh)
        scale = 1.0 / math.sqrt(dh)
        alpha = torch.einsum("bthd,hd->bth", q, self.w_q) * scale
        global_q = masked_softmax_pool(alpha, q, pad_mask)  # (B, 1, H, dh)
        p = global_q * k
        beta = torch.einsum("bthd,hd->bth", p, self.w_k) * scale
        global_k = masked_softmax_pool(beta, p, pad_mask)  # (B, 1, H, dh)
        u = (global_k * v).reshape(B, T, D)
        out = self.dropout(self.out_proj(u)) + q.reshape(B, T, D)
        return zero_padded(out, pad_mask)
