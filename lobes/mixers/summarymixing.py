"""SummaryMixing: a linear-complexity token mixer.

Written from Parcollet, van Dalen, Zhang and Bhattacharya, "SummaryMixing: A
Linear-Complexity Alternative to Self-Attention for Speech Recognition and
Understanding" (Interspeech 2024, arXiv 2307.07421). For each frame t of an
utterance with valid frames 1..T:

    f_t  = f(x_t)                          local branch, a per-frame MLP
    s    = 1/T sum_{t valid} s(x_t)        summary branch, a per-frame MLP
                                           averaged over the valid frames
    y_t  = c([f_t ; s])                    combiner, a per-frame dense layer
                                           (+ activation) on the concatenation

Time and memory are linear in T: the only interaction between frames is the
mean over the utterance's *valid* frames (padding never enters it). In the
"SummaryMixing-lite" mode there is no local branch, ``y_t = c(s)`` for every
valid frame (the Conformer's convolution module then supplies the local
context).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
from torch import nn

from lobes.mixers.common import masked_mean, zero_padded

MODES = ("SummaryMixing", "SummaryMixing-lite")


def _mlp(in_dim, hidden_dims, out_dim, activation, dropout):
    """Linear layers of sizes ``hidden_dims + [out_dim]``, each followed by
    ``activation`` and dropout (also the last one)."""
    layers, dim = [], in_dim
    for hid in list(hidden_dims) + [out_dim]:
        layers += [nn.Linear(dim, hid), activation(), nn.Dropout(dropout)]
        dim = hid
    return nn.Sequential(*layers)


class SummaryMixing(nn.Module):
    """SummaryMixing token mixer (linear in T).

    Every frame is combined with the mean over the utterance's valid frames of
    a summary transform (see the module docstring for the equations).

    Arguments
    ---------
    d_model : int
        Input and output size D.
    nhead : int
        Heads of the local branch: the last layer of the local branch is split
        into ``nhead`` independent blocks (block-diagonal weights), head h
        mapping the h-th slice of the last hidden layer to the h-th slice of
        the local output. ``nhead=1`` (the paper's BEST-RQ setting) is an
        ordinary dense layer. The summary branch and the combiner have no
        heads; ``nhead`` is unused in the lite mode.
    dropout : float
        Dropout after every layer of the branches and the combiner.
    local_proj_hid_dim : list of int
        Hidden sizes of the local branch f (each layer followed by
        ``activation``).
    local_proj_out_dim : int, optional
        Output size of the local branch (default D).
    summary_hid_dim : list of int
        Hidden sizes of the summary branch s.
    summary_out_dim : int, optional
        Output size of the summary branch (default D).
    activation : type
        Activation class applied after every linear layer (default GELU).
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
    >>> lite = SummaryMixing(16, summary_hid_dim=[32], mode="SummaryMixing-lite")
    >>> lite(x, pad).shape
    torch.Size([2, 7, 16])
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
                f"SummaryMixing: unknown mode {mode!r}; valid modes are "
                f"{' and '.join(repr(m) for m in MODES)}"
            )
        self.mode = mode
        self.nhead = nhead
        summary_out = summary_out_dim or d_model
        self.summary = _mlp(
            d_model, summary_hid_dim, summary_out, activation, dropout
        )
        if mode == "SummaryMixing":
            local_out = local_proj_out_dim or d_model
            local_hid = list(local_proj_hid_dim)
            # All local layers but the last (ordinary dense layers) ...
            self.local = (
                _mlp(d_model, local_hid[:-1], local_hid[-1], activation, dropout)
                if local_hid
                else nn.Identity()
            )
            local_in = local_hid[-1] if local_hid else d_model
            for size, what in ((local_in, "input"), (local_out, "output")):
                if size % nhead != 0:
                    raise ValueError(
                        f"SummaryMixing: the {what} size {size} of the last "
                        f"local layer is not divisible by nhead={nhead}"
                    )
            # ... then the last one, one block per head (block-diagonal).
            self.local_heads = nn.Parameter(
                torch.empty(nhead, local_in // nhead, local_out // nhead)
            )
            self.local_bias = nn.Parameter(torch.empty(local_out))
            # nn.Linear's initialisation, per head (fan-in = block input size).
            bound = 1.0 / math.sqrt(local_in // nhead)
            nn.init.uniform_(self.local_heads, -bound, bound)
            nn.init.uniform_(self.local_bias, -bound, bound)
            self.local_act = activation()
            self.local_drop = nn.Dropout(dropout)
            combiner_in = local_out + summary_out
        else:
            combiner_in = summary_out
        self.combiner = nn.Sequential(
            nn.Linear(combiner_in, d_model), activation(), nn.Dropout(dropout)
        )

    def local_branch(self, x):
        """The local transform f, frame by frame: (..., D) -> (..., D_f)."""
        hidden = self.local(x)
        heads = hidden.unflatten(-1, (self.nhead, -1))
        out = torch.einsum("...hi,hio->...ho", heads, self.local_heads)
        out = out.flatten(-2) + self.local_bias
        return self.local_drop(self.local_act(out))

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
        T = x.shape[1]
        summary = masked_mean(self.summary(x), pad_mask)  # (B, 1, D_s)
        if self.mode == "SummaryMixing-lite":
            out = self.combiner(summary).expand(-1, T, -1)
        else:
            local = self.local_branch(x)  # (B, T, D_f)
            out = self.combiner(
                torch.cat([local, summary.expand(-1, T, -1)], dim=-1)
            )
        return zero_padded(out, pad_mask)
