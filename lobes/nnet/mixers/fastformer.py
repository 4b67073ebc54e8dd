"""Fastformer: additive attention, a linear-complexity token mixer.

Written from Wu, Wu, Qi, Huang and Xie, "Fastformer: Additive Attention Can
Be All You Need" (arXiv 2108.09084, 2021), as the BEST-RQ study ran it. With
q_i = W_q x_i, k_i = W_k x_i (D-dim), d_h = D / H and, for head h, the h-th
d_h-slice written [.]_h:

    alpha_ih = softmax_i((w_qh . q_i + b_qh) / sqrt(d_h))    over valid frames i
    [q_g]_h  = sum_i alpha_ih [q_i]_h                        global query
    p_i      = q_g * k_i                                     element-wise
    beta_ih  = softmax_i((w_kh . p_i + b_kh) / sqrt(d_h))    over valid frames i
    [k_g]_h  = sum_i beta_ih [p_i]_h                         global key
    u_i      = k_g * v_i
    r_i      = W_r u_i + q_i                                 output (query residual)

Each head's score reads the whole D-dim vector (a ``Linear(D, H)`` per
pooling, as in the paper's released code), while it pools its own slice.
Fastformer shares the query and value transformations (the paper's
query-value parameter sharing, also what the BEST-RQ study ran: its 616 width
assumes it), so by default v_i = q_i; ``share_query_value=False`` adds a
separate value projection. Dropout applies to the two pooled vectors.

Every step is a per-frame operation or a softmax pooling over time: time and
memory are linear in T (no T x T tensor). Padded frames get exactly zero
weight in both poolings, so they cannot change the outputs on real frames.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
from torch import nn

from lobes.nnet.mixers.common import masked_softmax_pool


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
        Dropout on the pooled global query and global key.
    share_query_value : bool
        If True (default, the paper's parameter sharing), the values are the
        queries. If False, a separate ``value_proj`` gives the values.

    Example
    -------
    >>> mixer = Fastformer(16, nhead=4)
    >>> x = torch.rand(2, 9, 16)
    >>> pad_mask = torch.arange(9)[None, :] >= torch.tensor([[9], [6]])
    >>> y = mixer(x, pad_mask)
    >>> y.shape
    torch.Size([2, 9, 16])
    >>> torch.allclose(y[1, :6], mixer(x[1:, :6])[0], atol=1e-6)
    True
    """

    def __init__(self, d_model, nhead=8, dropout=0.0, share_query_value=True):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(
                f"Fastformer: d_model={d_model} is not divisible by nhead={nhead}"
            )
        self.nhead = nhead
        self.d_head = d_model // nhead
        self.query_proj = nn.Linear(d_model, d_model)
        self.query_attn = nn.Linear(d_model, nhead)
        self.key_proj = nn.Linear(d_model, d_model)
        self.key_attn = nn.Linear(d_model, nhead)
        self.value_proj = (
            None if share_query_value else nn.Linear(d_model, d_model)
        )
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        # The paper's code: weights N(0, 0.02), biases zero.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes the frames of each utterance.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, D) input frames.
        pad_mask : torch.Tensor, optional
            (B, T) bool, True on padded frames.
        pos_emb : torch.Tensor, optional
            Ignored (mixer interface).

        Returns
        -------
        torch.Tensor
            (B, T, D); padded frames do not reach real ones.
        """
        B, T, D = x.shape
        H, dh = self.nhead, self.d_head
        scale = 1.0 / math.sqrt(dh)
        # Without gradients (and autocast's dtypes), the (B, T, D) tensors
        # are overwritten once used: no new one after the projections.
        inplace = not torch.is_autocast_enabled(x.device.type) and (
            not torch.is_grad_enabled()
            or not (x.requires_grad or any(w.requires_grad for w in self.parameters()))
        )
        q = self.query_proj(x)
        global_q = masked_softmax_pool(
            self.query_attn(q) * scale, q.view(B, T, H, dh), pad_mask
        )  # (B, 1, H, dh)
        # p = global_q * (x W_k + b_k), the bias added in the same pass
        gq = self.dropout(global_q).reshape(B, 1, D)
        k = torch.matmul(x, self.key_proj.weight.t())
        p = torch.addcmul(self.key_proj.bias * gq, k, gq, out=k if inplace else None)
        global_k = masked_softmax_pool(
            self.key_attn(p) * scale, p.view(B, T, H, dh), pad_mask
        )
        v = q if self.value_proj is None else self.value_proj(x)
        gk = self.dropout(global_k).reshape(B, 1, D)
        u = torch.mul(v, gk, out=p if inplace else None)
        # out_proj(u) + q, q taken as the product's addend
        weight = self.out_proj.weight.t().expand(B, -1, -1)
        out = q.baddbmm_(u, weight) if inplace else torch.baddbmm(q, u, weight)
        return out.add_(self.out_proj.bias)
