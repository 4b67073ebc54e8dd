"""Fastformer: additive attention, a linear-complexity token mixer.

Written from Wu, Wu, Qi, Huang and Xie, "Fastformer: Additive Attention Can
Be All You Need" (arXiv 2108.09084, 2021). Per head h, with d_h = D / H:

    alpha_i = softmax_i(w_q . q_i / sqrt(d_h))        over valid frames i
    q_g     = sum_i alpha_i q_i                       global query
    p_i     = q_g * k_i                               element-wise
    beta_i  = softmax_i(w_k . p_i / sqrt(d_h))
    k_g     = sum_i beta_i p_i                        global key
    u_i     = k_g * v_i
    r_i     = W_r u_i + q_i                           output (query residual)

As in the authors' released Fastformer code (and the BEST-RQ paper's
models, whose 616 width assumes it), the values are the queries (v_i = q_i):
there are three D x D projections (query, key, output), not four.

Every step is a per-frame operation or a softmax pooling over time: time and
memory are linear in T. Padded frames get zero weight in both poolings.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
from torch import nn

from lobes.mhsa import zero_padded


def masked_softmax_pool(scores, values, pad_mask):
    """Softmax over time of ``scores``, used to pool ``values``.

    Arguments
    ---------
    scores : torch.Tensor
        (B, T, H) one score per frame and head.
    values : torch.Tensor
        (B, T, H, d) the vectors to pool.
    pad_mask : torch.Tensor or None
        (B, T) bool, True on padded frames (weight 0).

    Returns
    -------
    torch.Tensor
        (B, 1, H, d) pooled vectors.

    Example
    -------
    >>> scores = torch.zeros(1, 3, 1)
    >>> values = torch.tensor([[[[1.0]], [[3.0]], [[50.0]]]])
    >>> masked_softmax_pool(scores, values, torch.tensor([[False, False, True]]))
    tensor([[[[2.]]]])
    """
    if pad_mask is not None:
        scores = scores.masked_fill(pad_mask.unsqueeze(-1), float("-inf"))
    weights = torch.softmax(scores.float(), dim=1).to(values.dtype)
    return torch.einsum("bth,bthd->bhd", weights, values).unsqueeze(1)


class Fastformer(nn.Module):
    """Fastformer additive-attention token mixer.

    Arguments
    ---------
    d_model : int
        Input and output size D (divisible by ``nhead``).
    nhead : int
        Number of heads H.
    dropout : float
        Dropout on the output.

    Example
    -------
    >>> mixer = Fastformer(16, nhead=4)
    >>> x = torch.rand(2, 9, 16)
    >>> mixer(x, torch.zeros(2, 9, dtype=torch.bool)).shape
    torch.Size([2, 9, 16])
    """

    def __init__(self, d_model, nhead=8, dropout=0.0):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(
                f"Fastformer: d_model={d_model} is not divisible by nhead={nhead}"
            )
        self.nhead = nhead
        self.d_head = d_model // nhead
        self.qk = nn.Linear(d_model, 2 * d_model)
        # One scoring vector per head for the query and the key poolings.
        self.w_q = nn.Parameter(torch.empty(nhead, self.d_head))
        self.w_k = nn.Parameter(torch.empty(nhead, self.d_head))
        nn.init.normal_(self.w_q, std=self.d_head**-0.5)
        nn.init.normal_(self.w_k, std=self.d_head**-0.5)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes (B, T, D) frames; ``pad_mask`` (B, T) is True on padding."""
        B, T, D = x.shape
        q, k = self.qk(x).view(B, T, 2, self.nhead, self.d_head).unbind(2)
        scale = 1.0 / math.sqrt(self.d_head)
        alpha = torch.einsum("bthd,hd->bth", q, self.w_q) * scale
        global_q = masked_softmax_pool(alpha, q, pad_mask)
        p = global_q * k
        beta = torch.einsum("bthd,hd->bth", p, self.w_k) * scale
        global_k = masked_softmax_pool(beta, p, pad_mask)
        u = (global_k * q).reshape(B, T, D)  # values = queries
        out = self.dropout(self.out_proj(u)) + q.reshape(B, T, D)
        return zero_padded(out, pad_mask)
