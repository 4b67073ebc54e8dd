"""Our token mixers inside SpeechBrain's own Conformer models.

SpeechBrain's ``ConformerEncoderLayer`` (``speechbrain.lobes.models.
transformer.Conformer``: the encoder of ``ConformerEncoder`` and of
``TransformerASR`` with ``encoder_module: conformer``, as in SpeechBrain's
BEST-RQ recipe and its Conformer ASR recipes) calls its attention as::

    x, attn = self.mha_layer(x, x, x, attn_mask=src_mask,
                             key_padding_mask=src_key_padding_mask,
                             pos_embs=pos_embs)

:class:`MixerAttention` takes that call and runs any mixer of
``lobes.nnet.mixers.MIXERS`` (``forward(x, pad_mask, pos_emb)``), returning
``(output, None)``; :func:`replace_attention` puts one in every
``mha_layer`` of a model, in place, and works from HyperPyYAML::

    Transformer: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
        ...
        attention_type: regularMHA   # what gives the mixer its positions, see below
    use_summarymixing: !apply:lobes.nnet.speechbrain_adapter.replace_attention
        model: !ref <Transformer>
        mixer: summarymixing

Positions stay SpeechBrain's: ``TransformerASR`` computes them from its
``attention_type``, so build it with the one that gives the mixer what our
encoder gives it (:func:`speechbrain_attention_type`): ``RelPosMHAXL`` for
``mhsa`` (Transformer-XL relative embeddings), ``hypermixing`` for
``hypermixing`` (no encoder positions: it adds its own), ``regularMHA`` (with
``positional_encoding: fixed_abs_sine``, the default) for the others (sines
added to the input). ``replace_attention`` refuses a mismatch.

With the same weights, SpeechBrain's ``ConvolutionFrontEnd`` + ``TransformerASR``
Conformer with a mixer swapped in computes what our
``lobes.nnet.encoder.ConformerEncoder`` with ``padding_isolation: False``
computes (tested for every registered mixer, ``tests/unit/test_speechbrain_adapter.py``),
and ``lobes.deploy.convert --layout speechbrain`` converts its checkpoints
into our model folders (each ``mha_layer`` records its mixer, heads and
arguments in its state dict).

What SpeechBrain's layer does not give a mixer: attention masks. A causal
model or Dynamic Chunk Training (``causal: True``, ``streaming: True``) passes
a mask that whole-utterance mixers cannot honour, so it is refused.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoderLayer
from speechbrain.nnet.activations import Swish
from torch import nn

from lobes.config import RUNTIME_MIXER_SETTINGS, _plain, check_arguments, encoder_config
from lobes.nnet.mixers import MIXERS, build_mixer, check_mixer_name
from lobes.utils.speechbrain_private import conformer_layer_settings

# What TransformerASR's ``attention_type`` gives the layers, by the
# positional encoding our encoder gives each mixer (MixerSpec).
SPEECHBRAIN_ATTENTION_TYPE = {
    "relative": "RelPosMHAXL",
    "absolute": "regularMHA",
    "none": "hypermixing",
}
INITS = ("xavier_normal", "default")


def speechbrain_attention_type(mixer):
    """The ``attention_type`` to build SpeechBrain's ``TransformerASR`` with
    before :func:`replace_attention` puts ``mixer`` in it: the one whose
    positions are those our encoder gives that mixer.

    Example
    -------
    >>> speechbrain_attention_type("mhsa"), speechbrain_attention_type("summarymixing")
    ('RelPosMHAXL', 'regularMHA')
    >>> speechbrain_attention_type("hypermixing")
    'hypermixing'
    """
    check_mixer_name(mixer)
    return SPEECHBRAIN_ATTENTION_TYPE[MIXERS[mixer].positional_encoding]


def _positions_given(transformer):
    """The positional encoding that a ``TransformerInterface`` gives its
    encoder layers (see ``TransformerASR.encode``)."""
    attention_type = getattr(transformer, "attention_type", None)
    if attention_type == "RelPosMHAXL":
        return "relative"
    if attention_type in ("hypermixing", "RoPEMHA"):
        return "none"
    if getattr(transformer, "positional_encoding_type", None) == "fixed_abs_sine":
        return "absolute"
    return "none"


def mixer_defaults(mixer):
    """``(nhead, mixer_kwargs)`` of ``mixer`` as this package's encoder
    definition (``hparams/encoder_<mixer>.yaml``, the paper's) has them;
    ``(None, {})`` for a mixer without a definition.

    Example
    -------
    >>> mixer_defaults("summarymixing")
    (1, {'local_proj_hid_dim': [512], 'local_proj_out_dim': 512, 'summary_hid_dim': [1024]})
    """
    check_mixer_name(mixer)
    try:
        config = encoder_config(mixer)
    except ValueError:  # no encoder definition (e.g. summarymixing_lite)
        return None, {}
    return config["nhead"], dict(config["mixer_kwargs"])


class MixerAttention(nn.Module):
    """A token mixer with the call signature of SpeechBrain's attention
    modules (``MultiheadAttention``, ``RelPosMHAXL``, ``HyperMixing``).

    Arguments
    ---------
    mixer : str
        A key of ``lobes.nnet.mixers.MIXERS``.
    d_model : int
        Feature size.
    nhead : int
        Heads of the mixer (ignored by those without heads).
    dropout : float
        Dropout inside the mixers that take one.
    activation : type
        Activation of the mixers that take one (SummaryMixing): the
        Conformer's.
    padding_isolation : bool
        True: padded frames never reach real ones inside the mixer (Mamba
        reverses each utterance within its length). False: as the BEST-RQ
        study's fork computed it (Mamba reverses the padded batch), which
        ``ConformerEncoder(padding_isolation=False)`` reproduces. The other
        mixers keep padding away either way.
    mixer_kwargs : dict, optional
        The mixer's own arguments (e.g. ``local_proj_hid_dim``).

    Example
    -------
    >>> attn = MixerAttention("fastformer", 16, nhead=4)
    >>> x = torch.rand(2, 5, 16)
    >>> pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    >>> out, weights = attn(x, x, x, key_padding_mask=pad)
    >>> out.shape, weights
    (torch.Size([2, 5, 16]), None)
    >>> attn.get_extra_state()
    {'mixer': 'fastformer', 'nhead': 4, 'mixer_kwargs': {}}
    """

    def __init__(
        self,
        mixer,
        d_model,
        nhead=1,
        dropout=0.0,
        activation=Swish,
        padding_isolation=True,
        mixer_kwargs=None,
    ):
        super().__init__()
        check_mixer_name(mixer)
        mixer_kwargs = _plain(dict(mixer_kwargs or {}))
        check_arguments(MIXERS[mixer].cls, mixer_kwargs, f"{mixer} mixer")
        self.mixer_name = mixer
        self.nhead = int(nhead)
        self.mixer_kwargs = mixer_kwargs
        self.mixer = build_mixer(
            mixer,
            d_model,
            self.nhead,
            dropout=dropout,
            activation=activation,
            padding_isolation=padding_isolation,
            **mixer_kwargs,
        )

    def forward(
        self,
        query,
        key=None,
        value=None,
        attn_mask=None,
        key_padding_mask=None,
        return_attn_weights=True,
        pos_embs=None,
    ):
        """Mixes ``query`` (B, T, D), SpeechBrain's self-attention call.

        Arguments
        ---------
        query, key, value : torch.Tensor
            The same (B, T, D) tensor (self-attention only).
        attn_mask : torch.Tensor, optional
            Refused when it masks anything: mixers see whole utterances.
        key_padding_mask : torch.Tensor, optional
            (B, T), True on padded frames.
        return_attn_weights : bool
            Ignored: there are no attention weights.
        pos_embs : torch.Tensor, optional
            SpeechBrain's relative positional embedding (``RelPosMHAXL``
            models), passed to the mixers that use one (``mhsa``).

        Returns
        -------
        output : torch.Tensor
            (B, T, D).
        attn : None
            No attention weights (a (B, T, T) tensor would make a linear
            mixer quadratic).
        """
        for name, other in (("key", key), ("value", value)):
            if other is not None and other is not query:
                raise ValueError(
                    f"MixerAttention ({self.mixer_name}) mixes the frames of one "
                    f"sequence: its {name} must be its query (self-attention). "
                    "Use it in encoder layers only."
                )
        if attn_mask is not None and bool(
            (attn_mask if attn_mask.dtype == torch.bool else attn_mask != 0).any()
        ):
            raise ValueError(
                f"MixerAttention ({self.mixer_name}) got an attention mask: a "
                "token mixer mixes whole utterances and cannot be causal or "
                "chunked. Build the model with causal: False and without "
                "Dynamic Chunk Training (streaming: False / no "
                "dynchunktrain_config)."
            )
        pad_mask = None if key_padding_mask is None else key_padding_mask.bool()
        return self.mixer(query, pad_mask, pos_embs), None

    def get_extra_state(self):
        """The mixer, its heads and its arguments, stored in the state dict:
        a checkpoint says what it holds (``lobes.deploy.convert`` reads it)."""
        return {
            "mixer": self.mixer_name,
            "nhead": self.nhead,
            "mixer_kwargs": dict(self.mixer_kwargs),
        }

    def set_extra_state(self, state):
        """Refuses weights of another mixer or other mixer sizes."""

        def arch(s):
            kwargs = {
                k: v for k, v in (s.get("mixer_kwargs") or {}).items()
                if k not in RUNTIME_MIXER_SETTINGS
            }
            return s.get("mixer"), s.get("nhead"), _plain(kwargs)

        if arch(state) != arch(self.get_extra_state()):
            raise ValueError(
                f"These weights are of another mixer ({state}) than this "
                f"layer's ({self.get_extra_state()}): give replace_attention "
                "the mixer, nhead and mixer_kwargs of the checkpoint."
            )


def replace_attention(
    model,
    mixer,
    nhead=None,
    mixer_kwargs=None,
    dropout=None,
    activation=None,
    padding_isolation=True,
    init="xavier_normal",
    check_positions=True,
):
    """Puts ``mixer`` in place of the attention (``mha_layer``) of every
    SpeechBrain ``ConformerEncoderLayer`` of ``model``, in place.

    Arguments
    ---------
    model : torch.nn.Module
        A SpeechBrain ``TransformerASR``, ``EncoderWrapper``,
        ``ConformerEncoder``, or any module holding them (e.g. the
        ``ModuleList`` of SpeechBrain's BEST-RQ recipe).
    mixer : str
        A key of ``lobes.nnet.mixers.MIXERS``.
    nhead : int, optional
        Heads of the mixer. Default: those of this package's encoder
        definition of ``mixer`` (``hparams/encoder_<mixer>.yaml``: the
        paper's, e.g. 1 for SummaryMixing), else those of the replaced
        attention.
    mixer_kwargs : dict, optional
        The mixer's arguments, merged key by key over the definition's (e.g.
        ``{local_proj_hid_dim: [512], local_proj_out_dim: 512,
        summary_hid_dim: [1024]}``; unknown keys are refused).
    dropout : float, optional
        Default: the layer's dropout.
    activation : type, optional
        Default: the activation of the layer's feed-forward modules (the
        Conformer's ``conformer_activation``), as our encoder does.
    padding_isolation : bool
        See :class:`MixerAttention` (False: exactly the BEST-RQ study's Mamba
        on padded batches).
    init : str
        ``"xavier_normal"`` (default): every parameter of two or more
        dimensions of the new mixers is drawn with ``xavier_normal_``, as
        ``TransformerASR`` did for the attention it replaces (and as our
        encoder does); ``"default"``: the mixers' own initialisation.
    check_positions : bool
        Refuse a ``TransformerASR`` whose ``attention_type`` gives the mixer
        other positions than our encoder gives it (see
        :func:`speechbrain_attention_type`).

    Returns
    -------
    torch.nn.Module
        ``model`` (changed in place), for ``!apply:`` in YAML.

    Example
    -------
    >>> from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    >>> asr = TransformerASR(tgt_vocab=10, input_size=20, d_model=16, nhead=2,
    ...                      num_encoder_layers=2, num_decoder_layers=0, d_ffn=32,
    ...                      encoder_module="conformer", attention_type="regularMHA",
    ...                      normalize_before=True, causal=False)
    >>> _ = replace_attention(asr, "fastformer")
    >>> type(asr.encoder.layers[0].mha_layer).__name__, asr.encoder.layers[0].mha_layer.nhead
    ('MixerAttention', 8)
    >>> asr.encode(torch.rand(3, 9, 20), torch.tensor([1.0, 0.8, 0.5])).shape
    torch.Size([3, 9, 16])
    >>> replace_attention(asr, "mhsa")
    Traceback (most recent call last):
    ...
    ValueError: ...attention_type: RelPosMHAXL...
    """
    check_mixer_name(mixer)
    if init not in INITS:
        raise ValueError(f"replace_attention: init={init!r}; use one of {', '.join(INITS)}")
    layers = [m for m in model.modules() if isinstance(m, ConformerEncoderLayer)]
    if not layers:
        raise ValueError(
            f"replace_attention: {type(model).__name__} holds no SpeechBrain "
            "ConformerEncoderLayer (a TransformerASR with encoder_module: "
            "conformer, a ConformerEncoder, or a module holding one)."
        )
    if check_positions:
        wanted = MIXERS[mixer].positional_encoding
        for module in model.modules():
            if not hasattr(module, "positional_encoding_type") or not hasattr(module, "attention_type"):
                continue  # not a TransformerInterface
            given = _positions_given(module)
            if given != wanted:
                raise ValueError(
                    f"replace_attention: this {type(module).__name__} has "
                    f"attention_type: {module.attention_type} (positional_encoding: "
                    f"{module.positional_encoding_type}), which gives its layers "
                    f"{given} positions; {mixer} takes {wanted} positions. Build it "
                    f"with attention_type: {speechbrain_attention_type(mixer)}"
                    + (" and positional_encoding: fixed_abs_sine" if wanted == "absolute" else "")
                    + " (or pass check_positions=False)."
                )
    def_nhead, def_kwargs = mixer_defaults(mixer)
    kwargs = {**def_kwargs, **(mixer_kwargs or {})}
    for layer in layers:
        old = layer.mha_layer
        heads = nhead if nhead is not None else def_nhead
        if heads is None:
            heads = getattr(old, "num_heads", None) or getattr(
                getattr(old, "att", None), "num_heads", 1
            )
        d_model, layer_activation, layer_dropout = conformer_layer_settings(layer)
        new = MixerAttention(
            mixer,
            d_model,
            nhead=heads,
            dropout=layer_dropout if dropout is None else dropout,
            activation=layer_activation if activation is None else activation,
            padding_isolation=padding_isolation,
            mixer_kwargs=kwargs,
        )
        if init == "xavier_normal":
            for param in new.parameters():
                if param.dim() > 1:
                    nn.init.xavier_normal_(param)
        reference = next(layer.ffn_module1.parameters())
        layer.mha_layer = new.to(device=reference.device, dtype=reference.dtype)
    return model
