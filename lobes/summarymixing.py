"""SummaryMixing: a linear-complexity token mixer.

Written from Parcollet, van Dalen, Zhang and Bhattacharya, "SummaryMixing: A
Linear-Complexity Alternative to Self-Attention for Speech Recognition and
Understanding" (Interspeech 2024, arXiv 2307.07421). For each frame t:

    f_t  = local(x_t)                   a per-frame MLP
    s    = mean_{t valid} summary(x_t)  one summary vector per utterance
    y_t  = combiner([f_t ; s])          a per-frame MLP on the concatenation

Time and memory are linear in T: the only interaction between frames is the
mean over the utterance's *valid* frames. In the "lite" mode there is no local
branch: ``y_t = combiner(s)`` for every valid frame (the Conformer's
convolution module then supplies the local context).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
from torch import nn

from lobes.mhsa import zero_padded

MODES = ("SummaryMixing", "SummaryMixing-lite")


def _mlp(in_dim, hidden_dims, out_dim, activation, dropout):
    """Linear layers with ``activation`` after each (also the last one)."""
    layers, dim = [], in_dim
    for hid in list(hidden_dims) + [out_dim]:
        layers += [nn.Linear(dim, hid), activation(), nn.Dropout(dropout)]
        dim = hid
    return nn.Sequential(*layers)


def masked_mean(x, pad_mask):
    """Mean over time of the valid frames of ``x`` (B, T, D) -> (B, 1, D).

    Example
    -------
    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(x, torch.tensor([[False, False, True]]))
    tensor([[[2.]]])
    """
    if pad_mask is None:
        return x.mean(dim=1, keepdim=True)
    valid = (~pad_mask).unsqueeze(-1).to(x.dtype)
    return (x * valid).sum(dim=1, keepdim=True) / valid.sum(
        dim=1, keepdim=True
    ).clamp(min=1)


class SummaryMixing(nn.Module):
    """SummaryMixing token mixer.

    Arguments
    ---------
    d_model : int
        Input and output size D.
    nhead : int
        Number of heads of the local branch: its output is split into
        ``nhead`` groups, each with its own last linear layer (block-diagonal),
        as in the paper's multi-head variant. The paper's BEST-RQ models use 1.
    dropout : float
        Dropout after each layer of the branches.
    local_proj_hid_dim : list of int
        Hidden sizes of the local branch MLP.
    local_proj_out_dim : int, optional
        Output size of the local branch (default D).
    summary_hid_dim : list of int
        Hidden sizes of the summary branch MLP.
    summary_out_dim : int, optional
        Output size of the summary branch (default D).
    activation : type
        Activation after every linear layer.
    mode : str
        ``"SummaryMixing"`` or ``"SummaryMixing-lite"`` (no local branch).

    Example
    -------
    >>> mixer = SummaryMixing(16, local_proj_hid_dim=[32], summary_hid_dim=[32])
    >>> x = torch.rand(2, 7, 16)
    >>> pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    >>> y = mixer(x, pad)
    >>> y.shape, bool(y[1, 4:].abs().sum() == 0)
    (torch.Size([2, 7, 16]), True)
    """

    def __init__(
        self,
        d_model,
        nhead=1,
        dropout=0.0,
        local_proj_hid_dim=(1024,),
        local_proj_out_dim=None,
        summary_hid_dim=(1024,),
        summary_out_dim=None,
        activation=nn.GELU,
        mode="SummaryMixing",
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(
                f"SummaryMixing mode {mode!r} is not one of {MODES}"
            )
        self.mode = mode
        local_out = local_proj_out_dim or d_model
        summary_out = summary_out_dim or d_model
        self.summary = _mlp(
            d_model, summary_hid_dim, summary_out, activation, dropout
        )
        if mode == "SummaryMixing":
            if local_out % nhead != 0:
                raise ValueError(
                    f"SummaryMixing: local output size {local_out} is not "
                    f"divisible by nhead={nhead}"
                )
            self.nhead = nhead
            self.local = _mlp(
                d_model, local_proj_hid_dim[:-1], local_proj_hid_dim[-1],
                activation, dropout,
            ) if local_proj_hid_dim else nn.Identity()
            local_in = local_proj_hid_dim[-1] if local_proj_hid_dim else d_model
            if local_in % nhead != 0:
                raise ValueError(
                    f"SummaryMixing: local hidden size {local_in} is not "
                    f"divisible by nhead={nhead}"
                )
            # Last local layer: one linear per head (block-diagonal).
            self.local_heads = nn.Parameter(
                torch.empty(nhead, local_in // nhead, local_out // nhead)
            )
            self.local_bias = nn.Parameter(torch.zeros(local_out))
            nn.init.xavier_uniform_(self.local_heads)
            self.local_act = activation()
            combiner_in = local_out + summary_out
        else:
            combiner_in = summary_out
        self.combiner = nn.Sequential(
            nn.Linear(combiner_in, d_model), activation(), nn.Dropout(dropout)
        )

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes (B, T, D) frames; ``pad_mask`` (B, T) is True on padding."""
        summary = masked_mean(self.summary(x), pad_mask)
        if self.mode == "SummaryMixing-lite":
            out = self.combiner(summary).expand(-1, x.shape[1], -1)
        else:
            local = self.local(x)
            B, T, H = local.shape
            local = torch.einsum(
                "bthi,hio->btho",
                local.view(B, T, self.nhead, H // self.nhead),
                self.local_heads,
            ).reshape(B, T, -1)
            local = self.local_act(local + self.local_bias)
            out = self.combiner(
                torch.cat([local, summary.expand(-1, T, -1)], dim=-1)
            )
        return zero_padded(out, pad_mask)
