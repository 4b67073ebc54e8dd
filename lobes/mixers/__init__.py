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

from lobes.mixers.fastformer import Fastformer
from lobes.mixers.hypermixing import HyperMixing
from lobes.mixers.mamba import BiMamba
from lobes.mixers.mhsa import RelPosMHSA, SDPAMHSA
from lobes.mixers.summarymixing import SummaryMixing

POSITIONAL_ENCODINGS = ("relative", "absolute", "none")


@dataclass(frozen=True)
class MixerSpec:
    """What the encoder needs to know about one mixer.

    Arguments
    ---------
    cls : type
        The ``torch.nn.Module`` class.
    positional_encoding : str
        One of ``POSITIONAL_ENCODINGS``: what the encoder gives this mixer.
    fixed_kwargs : dict
        Constructor arguments that define this variant of ``cls``.
    """

    cls: type
    positional_encoding: str
    fixed_kwargs: dict = field(default_factory=dict)


MIXERS = {
    "mhsa": MixerSpec(RelPosMHSA, "relative"),
    "mhsa_sdpa": MixerSpec(SDPAMHSA, "absolute"),
    "hypermixing": MixerSpec(HyperMixing, "none"),
    "fastformer": MixerSpec(Fastformer, "absolute"),
    "summarymixing": MixerSpec(
        SummaryMixing, "absolute", {"mode": "SummaryMixing"}
    ),
    "summarymixing_lite": MixerSpec(
        SummaryMixing, "absolute", {"mode": "SummaryMixing-lite"}
    ),
    "mamba": MixerSpec(BiMamba, "absolute"),
}


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
