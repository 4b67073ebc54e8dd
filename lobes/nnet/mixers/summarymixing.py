"""SummaryMixing: a linear-complexity token mixer.

Written from Parcollet, van Dalen, Zhang and Bhattacharya, "SummaryMixing: A
Linear-Complexity Alternative to Self-Attention for Speech Recognition and
Understanding" (Interspeech 2024, arXiv 2307.07421), in the configuration the
BEST-RQ study ran (Whetten et al., SLT 2024). For each frame t of an
utterance with valid frames 1..T:

    f_t = LN_f( f(x_t) )                        local branch: a per-frame MLP,
                                                then LayerNorm
    s   = LN_s( 1/T sum_{t valid} s(x_t) )      summary branch: a per-frame
                                                MLP, averaged over the valid
                                                frames, then LayerNorm
    y_t = act( W [f_t ; s] + b )                combiner on the concatenation

Every layer of f and s is a dense layer followed by the activation (also the
last one). In the BEST-RQ study f maps D -> 512 -> 512, s maps
D -> 1024 -> D and the activation is the Conformer's (Swish).

Time and memory are linear in T: the only interaction between frames is the
mean over the utterance's *valid* frames (padding never enters it). In the
"SummaryMixing-lite" mode there is no local branch and no combiner: every
valid frame gets the (un-normalised) summary mean ``1/T sum s(x_t)`` (the
Conformer's convolution module then supplies the local context).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.nnet.activations import Swish
from torch import nn

from lobes.nnet.mixers.common import masked_mean

MODES = ("SummaryMixing", "SummaryMixing-lite")


class HeadedLinear(nn.Module):
    """A dense layer split into ``nhead`` independent blocks.

    Input and output are cut into ``nhead`` equal slices and slice h of the
    output depends only on slice h of the input (block-diagonal weights).
    ``nhead=1`` is an ordinary ``nn.Linear`` (weights under ``linear.``).

    Arguments
    ---------
    in_features, out_features : int
        Sizes, both divisible by ``nhead``.
    nhead : int
        Number of blocks.

    Example
    -------
    >>> layer = HeadedLinear(8, 6, nhead=2)
    >>> x = torch.rand(3, 8)
    >>> y = layer(x)
    >>> y.shape
    torch.Size([3, 6])
    >>> x2 = x.clone(); x2[:, 4:] = 0  # the second input slice ...
    >>> torch.equal(layer(x2)[:, :3], y[:, :3])  # ... never reaches the first output slice
    True
    """

    def __init__(self, in_features, out_features, nhead=1):
        super().__init__()
        for size, what in ((in_features, "input"), (out_features, "output")):
            if size % nhead != 0:
                raise ValueError(
                    f"SummaryMixing: the {what} size {size} of a layer is not "
                    f"divisible by nhead={nhead}"
                )
        self.nhead = nhead
        if nhead == 1:
            self.linear = nn.Linear(in_features, out_features)
            return
        # nn.Linear's initialisation, per block (fan-in = block input size).
        bound = (nhead / in_features) ** 0.5
        self.weight = nn.Parameter(
            torch.empty(nhead, in_features // nhead, out_features // nhead)
        )
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """Maps (..., in_features) to (..., out_features)."""
        if self.nhead == 1:
            return self.linear(x)
        heads = x.unflatten(-1, (self.nhead, -1))
        out = torch.einsum("...hi,hio->...ho", heads, self.weight)
        return out.flatten(-2) + self.bias


def _mlp(in_dim, sizes, activation, nhead):
    """Dense layers of ``sizes``, each followed by ``activation``."""
    layers, dim = [], in_dim
    for size in sizes:
        layers += [HeadedLinear(dim, size, nhead), activation()]
        dim = size
    return nn.Sequential(*layers)


def _activate(activation, x):
    """``activation(x)``, in place where nothing needs ``x`` afterwards (no
    gradient) and the activation is SiLU (the Conformer's Swish with beta
    1): one pass over ``x`` and no new tensor."""
    silu = isinstance(activation, nn.SiLU) or (
        isinstance(activation, Swish) and activation.beta == 1
    )
    if silu and not (torch.is_grad_enabled() and x.requires_grad):
        return F.silu(x, inplace=True)
    return activation(x)


def _run_mlp(mlp, x):
    """``mlp(x)`` with ``_activate``'s activations."""
    layers = list(mlp)
    for layer, activation in zip(layers[::2], layers[1::2]):
        x = _activate(activation, layer(x))
    return x


class SummaryMixing(nn.Module):
    """SummaryMixing token mixer (linear in T).

    Every frame is combined with the mean over the utterance's valid frames of
    a summary transform (see the module docstring for the equations).

    Arguments
    ---------
    d_model : int
        Input and output size D.
    nhead : int
        Heads of the two branches: each of their layers is split into
        ``nhead`` independent blocks (``HeadedLinear``). ``nhead=1`` (the
        BEST-RQ setting) gives ordinary dense layers. The combiner has no
        heads.
    local_proj_hid_dim : list of int
        Hidden sizes of the local branch f.
    local_proj_out_dim : int
        Output size of the local branch (512 in the BEST-RQ study).
    summary_hid_dim : list of int
        Hidden sizes of the summary branch s (its output size is D).
    activation : type
        Activation class after every dense layer (default Swish, the
        Conformer's).
    mode : str
        ``"SummaryMixing"`` or ``"SummaryMixing-lite"`` (no local branch).

    Example
    -------
    >>> mixer = SummaryMixing(16, local_proj_hid_dim=[32], local_proj_out_dim=8,
    ...                       summary_hid_dim=[32])
    >>> x = torch.rand(2, 7, 16)
    >>> pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    >>> y = mixer(x, pad)
    >>> y.shape, torch.allclose(y[1, :4], mixer(x[1:, :4])[0], atol=1e-6)
    (torch.Size([2, 7, 16]), True)
    >>> lite = SummaryMixing(16, summary_hid_dim=[32], mode="SummaryMixing-lite")
    >>> lite(x, pad).shape
    torch.Size([2, 7, 16])
    """

    def __init__(
        self,
        d_model,
        nhead=1,
        local_proj_hid_dim=(512,),
        local_proj_out_dim=512,
        summary_hid_dim=(1024,),
        activation=Swish,
        mode="SummaryMixing",
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(
                f"SummaryMixing: unknown mode {mode!r}; valid modes are "
                f"{' and '.join(repr(m) for m in MODES)}"
            )
        self.mode = mode
        self.summary = _mlp(
            d_model, list(summary_hid_dim) + [d_model], activation, nhead
        )
        if mode == "SummaryMixing":
            self.local = _mlp(
                d_model,
                list(local_proj_hid_dim) + [local_proj_out_dim],
                activation,
                nhead,
            )
            self.local_norm = nn.LayerNorm(local_proj_out_dim)
            self.summary_norm = nn.LayerNorm(d_model)
            self.combiner = nn.Sequential(
                nn.Linear(local_proj_out_dim + d_model, d_model), activation()
            )
        # As in the SummaryMixing authors' code, every bias starts at zero.
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)

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
        B, T, _ = x.shape
        summary = masked_mean(_run_mlp(self.summary, x), pad_mask)  # (B, 1, D)
        if self.mode == "SummaryMixing-lite":
            return summary.expand(-1, T, -1)
        # Padded frames enter the local LayerNorm as zeros (as in the
        # authors' code; it only matters for what padded frames output),
        # zeroed in place where no gradient is needed.
        local = _run_mlp(self.local, x)
        if pad_mask is not None:
            fill = local.masked_fill if local.requires_grad else local.masked_fill_
            local = fill(pad_mask.unsqueeze(-1), 0.0)
        local = self.local_norm(local)
        # combiner(cat([local, summary])) with the summary's half of the
        # product computed once per utterance (it is the same on every
        # frame) and added inside the product over the frames (baddbmm).
        linear, activation = self.combiner
        n_local = local.shape[-1]
        per_utt = F.linear(
            self.summary_norm(summary), linear.weight[:, n_local:], linear.bias
        )  # (B, 1, D)
        out = torch.baddbmm(
            per_utt.expand(B, T, -1), local, linear.weight[:, :n_local].t().expand(B, -1, -1)
        )
        return _activate(activation, out)
