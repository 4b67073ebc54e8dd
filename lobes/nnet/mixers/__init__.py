"""Token mixers: the slot of the Conformer that MHSA usually fills.

The interface every mixer implements::

    mixer = MIXERS[name].cls(d_model, nhead=..., dropout=..., **kwargs)
    y = mixer(x, pad_mask=None, pos_emb=None)

* ``x``: (B, T, D) frames (the output of the Conformer layer's LayerNorm);
* ``pad_mask``: (B, T) bool, True on padded frames, or None;
* ``pos_emb``: the relative positional embedding of the sequence, for the
  mixers that use one (``mhsa``), else ignored;
* ``y``: (B, T, D); frames flagged in ``pad_mask`` never change the outputs
  on real frames (tested for every mixer). What padded frames output is left
  as the computation gives it (SpeechBrain's modules do the same); the
  encoder zeroes it when it isolates padding.

``MIXERS`` maps each name to its class, the positional encoding the encoder
adds for it (``relative``: the Transformer-XL embedding passed as
``pos_emb``; ``absolute``: sines added to the encoder input; ``none``), and
the fixed arguments that distinguish variants of one class.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import inspect
from dataclasses import dataclass, field
from typing import Optional

from lobes.nnet.mixers.fastformer import Fastformer
from lobes.nnet.mixers.hypermixing import HyperMixing
from lobes.nnet.mixers.mamba import BiMamba
from lobes.nnet.mixers.mhsa import SDPAMHSA, RelPosMHSA
from lobes.nnet.mixers.summarymixing import SummaryMixing

POSITIONAL_ENCODINGS = ("relative", "absolute", "none")


@dataclass(frozen=True)
class MixerSpec:
    """What the encoder, the recipes, the tests and the benchmarks need to
    know about one mixer: the one place a mixer is described.

    Arguments
    ---------
    cls : type
        The ``torch.nn.Module`` class.
    positional_encoding : str
        One of ``POSITIONAL_ENCODINGS``: what the encoder gives this mixer.
    fixed_kwargs : dict
        Constructor arguments that define this variant of ``cls``.
    linear : bool
        Time and memory linear in the sequence length.
    paper : bool
        One of the five encoders compared by Whetten et al. (2024): the
        recipes, the demo comparison and the benchmarks run these.
    definition : str or None
        The encoder definition file; None: ``hparams/encoder_<name>.yaml``.
    sizes_from : str or None
        A mixer whose definition gives this one's sizes (variants without a
        definition of their own, e.g. ``summarymixing_lite``).
    demo : dict
        The demo-size encoder (``d_model``, ``nhead``, ``mixer_kwargs``) of
        ``tools/demo_overrides.py``: about 1/6 of the paper's width.
    small_kwargs : dict
        Mixer arguments of a width-16 model for unit tests.
    """

    cls: type
    positional_encoding: str
    fixed_kwargs: dict = field(default_factory=dict)
    linear: bool = True
    paper: bool = False
    definition: Optional[str] = None
    sizes_from: Optional[str] = None
    demo: dict = field(default_factory=dict)
    small_kwargs: dict = field(default_factory=dict)


_SUMMARY_DEMO = {"local_proj_hid_dim": [88], "local_proj_out_dim": 88, "summary_hid_dim": [176]}
MIXERS = {
    "mhsa": MixerSpec(
        RelPosMHSA, "relative", linear=False, paper=True,
        demo={"d_model": 96, "nhead": 4},
    ),
    "mhsa_sdpa": MixerSpec(
        SDPAMHSA, "absolute", linear=False, demo={"d_model": 96, "nhead": 4}
    ),
    "hypermixing": MixerSpec(
        HyperMixing, "none", paper=True,
        demo={"d_model": 112, "nhead": 4, "mixer_kwargs": {"hypernet_size": 256}},
        small_kwargs={"hypernet_size": 32},
    ),
    "fastformer": MixerSpec(
        Fastformer, "absolute", paper=True, demo={"d_model": 104, "nhead": 4}
    ),
    "summarymixing": MixerSpec(
        SummaryMixing, "absolute", {"mode": "SummaryMixing"}, paper=True,
        demo={"d_model": 88, "nhead": 1, "mixer_kwargs": _SUMMARY_DEMO},
        small_kwargs={"local_proj_hid_dim": [24], "local_proj_out_dim": 12,
                      "summary_hid_dim": [20]},
    ),
    "summarymixing_lite": MixerSpec(
        SummaryMixing, "absolute", {"mode": "SummaryMixing-lite"},
        sizes_from="summarymixing",
        demo={"d_model": 88, "nhead": 1, "mixer_kwargs": {"summary_hid_dim": [176]}},
        small_kwargs={"summary_hid_dim": [20]},
    ),
    "mamba": MixerSpec(
        BiMamba, "absolute", paper=True,
        demo={"d_model": 80, "nhead": 1,
              "mixer_kwargs": {"d_state": 8, "d_conv": 4, "expand": 2}},
        small_kwargs={"d_state": 4},
    ),
}


def register_mixer(name, spec):
    """Adds a mixer to ``MIXERS`` (a sixth mixer needs this entry, its module
    and its encoder definition; see the README's "Adding a mixer").

    Example
    -------
    >>> from torch import nn
    >>> class Mean(nn.Module):
    ...     def __init__(self, d_model, nhead=1):
    ...         super().__init__()
    ...     def forward(self, x, pad_mask=None, pos_emb=None):
    ...         return x.mean(1, keepdim=True).expand_as(x)
    >>> register_mixer("toy_mean", MixerSpec(Mean, "absolute"))
    >>> "toy_mean" in mixer_names()
    True
    >>> _ = MIXERS.pop("toy_mean")
    """
    if spec.positional_encoding not in POSITIONAL_ENCODINGS:
        raise ValueError(
            f"Mixer {name!r}: positional_encoding {spec.positional_encoding!r}, "
            f"expected one of {', '.join(POSITIONAL_ENCODINGS)}"
        )
    MIXERS[name] = spec


def mixer_names(paper=None, linear=None):
    """The registered mixer names, in registration order, optionally only
    the paper's (``paper=True``) and/or the linear ones (``linear=True``).

    Example
    -------
    >>> mixer_names(paper=True)
    ['mhsa', 'hypermixing', 'fastformer', 'summarymixing', 'mamba']
    >>> mixer_names(paper=True, linear=True)
    ['hypermixing', 'fastformer', 'summarymixing', 'mamba']
    """
    return [
        name
        for name, spec in MIXERS.items()
        if (paper is None or spec.paper == paper)
        and (linear is None or spec.linear == linear)
    ]


def check_mixer_name(name):
    """Raises a ``ValueError`` naming the valid mixers if ``name`` is unknown.

    Example
    -------
    >>> check_mixer_name("fastformer")
    >>> check_mixer_name("fast-former")
    Traceback (most recent call last):
    ...
    ValueError: Unknown token mixer 'fast-former'. Valid names (the `mixer` hyperparameter): fastformer, hypermixing, mamba, mhsa, mhsa_sdpa, summarymixing, summarymixing_lite
    """
    if name not in MIXERS:
        raise ValueError(
            f"Unknown token mixer {name!r}. Valid names (the `mixer` "
            f"hyperparameter): {', '.join(sorted(MIXERS))}"
        )


def build_mixer(name, d_model, nhead, **kwargs):
    """Instantiates the token mixer registered under ``name``.

    Arguments
    ---------
    name : str
        A key of ``MIXERS``.
    d_model : int
        Feature size.
    nhead : int
        Number of heads (ignored by the mixers that have none).
    **kwargs : dict
        Mixer-specific arguments (e.g. ``local_proj_hid_dim`` for
        SummaryMixing, ``hypernet_size`` for HyperMixing). The encoder's
        ``dropout``, ``activation`` and ``padding_isolation`` are among them;
        each reaches only the mixers whose constructor takes it (SpeechBrain's
        HyperMixing, for one, has no dropout).

    Returns
    -------
    torch.nn.Module
        A module with ``forward(x, pad_mask=None, pos_emb=None)``.

    Example
    -------
    >>> import torch
    >>> mixer = build_mixer("fastformer", 16, 4, dropout=0.1)
    >>> mixer(torch.rand(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """
    check_mixer_name(name)
    spec = MIXERS[name]
    params = inspect.signature(spec.cls).parameters
    for shared in ("dropout", "activation", "padding_isolation"):
        if shared in kwargs and shared not in params:
            kwargs.pop(shared)
    return spec.cls(d_model, nhead=nhead, **spec.fixed_kwargs, **kwargs)
