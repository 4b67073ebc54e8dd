"""A Conformer encoder whose token mixer is chosen by name.

The encoder turns 80-dim fbank frames (10 ms) into 40 ms hidden states:

    fbank (B, T, 80)
      -> ConvFrontEnd: 2 conv blocks, stride 2 each   (B, T/4, 640)
      -> Linear to d_model, dropout, positions        (B, T/4, D)
      -> N x ConformerLayer (pre-norm macaron):
             x + 1/2 FFN(x) -> x + Mixer(LN(x)) -> x + Conv(x) -> LN(x + 1/2 FFN(x))
      -> LayerNorm

This is the computation of SpeechBrain's BEST-RQ encoder
(``ConvolutionFrontEnd`` + ``TransformerASR`` Conformer, as in SpeechBrain's
recipe and the BEST-RQ study's fork of it): Swish in the feed-forward and
convolution modules, no dropout on the mixer's output, LayerDrop, a final
LayerNorm with eps 1e-6, and every weight matrix of the Transformer part
re-initialised with ``xavier_normal_``. The token-mixer slot takes any name of
``lobes.nnet.mixers.MIXERS``; an unknown name is refused with the list of valid
ones.

``padding_isolation`` (default True) is the one deliberate difference: padded
frames never change the outputs on real frames. The front-end reflects each
utterance at its own end and zeroes the frames beyond it between blocks, the
convolution module zeroes padding *before* its depthwise convolution, every
layer's output is zeroed on padding, and Mamba reverses each utterance within
its length. With ``padding_isolation=False`` the encoder computes exactly what
SpeechBrain's does (and the authors' runs did), where the front-end and the
convolution module let padded frames reach the last real frames and Mamba's
reversed scan starts in the padding.

An encoder describes itself: ``encoder.config`` holds every constructor
argument (plain values), is stored in its state dict, and
``ConformerEncoder.from_config(config)`` rebuilds it; ``encoder_config(mixer,
size)`` reads the definition of each mixer from the top-level
``hparams/encoder_<mixer>.yaml`` files.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""


import torch
import torch.nn.functional as F
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import PositionalwiseFeedForward
from torch import nn

from lobes.config import _architecture, _plain, check_arguments
from lobes.nnet.frontend import ConvFrontEnd
from lobes.nnet.mixers import (
    MIXERS,
    POSITIONAL_ENCODINGS,
    build_mixer,
    check_mixer_name,
)
from lobes.nnet.mixers.common import linear_out8, sinusoidal_positions, zero_padded
from lobes.utils.speechbrain_private import check_convolution_module

ACTIVATIONS = {"swish": Swish, "gelu": nn.GELU, "relu": nn.ReLU}
INITS = ("xavier_normal", "default")


class MaskedConvolutionModule(ConvolutionModule):
    """SpeechBrain's Conformer convolution module, optionally padding-safe.

    Same parameters (and state-dict keys) as
    ``speechbrain.lobes.models.transformer.Conformer.ConvolutionModule``.
    SpeechBrain zeroes padded frames only in the output, so the depthwise
    convolution carries padding into the last ``kernel_size // 2`` real
    frames; with ``padding_isolation`` they are zeroed before it too. On a
    CPU the module stays time-major: both convolutions run as channels-last
    ``conv2d`` on (B, T, D) frames (``conv_time_major``; no transposing
    copies, and oneDNN's channels-last depthwise kernel runs the 31 taps
    ~10x faster than the channels-first one), and the last pointwise
    product runs through ``linear_out8`` (a width rounded up to a multiple
    of 8). Same numbers up to float32 rounding; on a GPU, SpeechBrain's
    channels-first layout.

    Example
    -------
    >>> conv = MaskedConvolutionModule(8, kernel_size=3)
    >>> x = torch.rand(1, 6, 8)
    >>> pad = torch.tensor([[False] * 4 + [True] * 2])
    >>> torch.allclose(conv(x, pad)[:, :4], conv(x[:, :4]), atol=1e-6)
    True
    """

    def __init__(self, *args, padding_isolation=True, **kwargs):
        super().__init__(*args, **kwargs)
        check_convolution_module(self)
        self.padding_isolation = padding_isolation

    def forward(self, x, pad_mask=None):
        """Convolves ``x`` (B, T, D); ``pad_mask`` (B, T) is True on padding."""
        isolate = pad_mask is not None and self.padding_isolation
        out = self.layer_norm(x)
        if x.device.type == "cpu":  # time-major throughout
            out = F.glu(conv_time_major(out, self.bottleneck[0]), dim=-1)
            if isolate:
                out = out.masked_fill(pad_mask.unsqueeze(-1), 0.0)
            out = conv_time_major(out, self.conv)
            if self.causal:
                out = out[:, : -self.padding]
        else:  # SpeechBrain's layout
            out = self.bottleneck(out.transpose(1, 2))
            if isolate:
                out = out.masked_fill(pad_mask.unsqueeze(1), 0.0)
            out = self.conv(out)
            if self.causal:
                out = out[..., : -self.padding]
            out = out.transpose(1, 2)
        norm, activation, pointwise, dropout = self.after_conv
        out = activation(norm(out))
        out = dropout(linear_out8(out, pointwise.weight, pointwise.bias))
        return zero_padded(out, pad_mask)


def conv_time_major(x, conv):
    """``conv`` (an ``nn.Conv1d`` with zero padding) on time-major frames:
    (B, T, C_in) -> (B, T', C_out), the same numbers up to float32 rounding
    as ``conv(x.transpose(1, 2)).transpose(1, 2)``.

    It runs as a channels-last ``conv2d`` on the (B, C_in, 1, T) view of
    ``x``, which is already laid out that way: no copy in or out, and on a
    CPU oneDNN's channels-last kernels (the Conformer's depthwise
    convolution of 31 taps at 80 s and width 672: ~1 ms against ~9 ms
    channels-first). The result is a (B, T', C_out) view, contiguous where
    the backend kept the channels-last layout.

    Example
    -------
    >>> conv = torch.nn.Conv1d(6, 6, 5, padding=2, groups=6)
    >>> x = torch.randn(2, 9, 6)
    >>> ref = conv(x.transpose(1, 2)).transpose(1, 2)
    >>> torch.allclose(conv_time_major(x, conv), ref, atol=1e-6)
    True
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(
            f"conv_time_major needs a Conv1d with numeric zero padding, got "
            f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
        )
    weight = conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(
        x.transpose(1, 2).unsqueeze(2),
        weight,
        conv.bias,
        stride=(1, conv.stride[0]),
        padding=(0, conv.padding[0]),
        dilation=(1, conv.dilation[0]),
        groups=conv.groups,
    )
    return out.squeeze(2).transpose(1, 2)


class FeedForward(PositionalwiseFeedForward):
    """SpeechBrain's ``PositionalwiseFeedForward`` (same parameters, same
    names), whose last product, on a CPU and a width that is not a multiple
    of 8 (Mamba's 474 and 678), runs on a width rounded up to one
    (``linear_out8``; same numbers up to float32 rounding). Other widths
    run SpeechBrain's forward unchanged.

    Example
    -------
    >>> ffn = FeedForward(d_ffn=16, input_size=6)
    >>> x = torch.randn(2, 5, 6)
    >>> torch.allclose(ffn(x), PositionalwiseFeedForward.forward(ffn, x), atol=1e-6)
    True
    """

    def forward(self, x):
        """(B, T, D) -> (B, T, D)."""
        last = self.ffn[-1]
        if last.out_features % 8 == 0 or x.device.type != "cpu":
            return super().forward(x)
        hidden = self.ffn[:-1](x)
        return linear_out8(hidden, last.weight, last.bias)


class ConformerLayer(nn.Module):
    """One pre-norm macaron Conformer layer with a pluggable token mixer.

    ``x + 1/2 FFN(x)``, then ``x + Mixer(LN(x))`` (no dropout on the mixer's
    output, as in SpeechBrain's Conformer), then ``x + Conv(x)``, then
    ``LN(x + 1/2 FFN(x))``.

    Arguments
    ---------
    d_model : int
        Feature size D.
    d_ffn : int
        Hidden size of the two feed-forward modules.
    nhead : int
        Heads of the token mixer (where it has heads).
    mixer : str
        Token mixer name, a key of ``lobes.nnet.mixers.MIXERS``.
    kernel_size : int
        Kernel of the depthwise convolution.
    dropout : float
        Dropout of the feed-forward and convolution modules (and inside the
        mixers that take one).
    activation : type
        Activation of the feed-forward and convolution modules (and of the
        mixers that take one, e.g. SummaryMixing).
    padding_isolation : bool
        Keep padded frames away from real ones (see ``ConformerEncoder``).
    mixer_kwargs : dict, optional
        Extra arguments of the mixer.

    Example
    -------
    >>> layer = ConformerLayer(16, 32, 1, "summarymixing",
    ...                        mixer_kwargs={"local_proj_hid_dim": [32],
    ...                                      "local_proj_out_dim": 8,
    ...                                      "summary_hid_dim": [32]})
    >>> layer(torch.rand(2, 7, 16)).shape
    torch.Size([2, 7, 16])
    """

    def __init__(
        self,
        d_model,
        d_ffn,
        nhead,
        mixer,
        kernel_size=31,
        dropout=0.1,
        activation=Swish,
        padding_isolation=True,
        mixer_kwargs=None,
    ):
        super().__init__()

        def ffn():
            return nn.Sequential(
                nn.LayerNorm(d_model),
                FeedForward(
                    d_ffn=d_ffn,
                    input_size=d_model,
                    dropout=dropout,
                    activation=activation,
                ),
                nn.Dropout(dropout),
            )

        self.padding_isolation = padding_isolation
        self.ffn1 = ffn()
        self.mixer_norm = nn.LayerNorm(d_model)
        self.mixer = build_mixer(
            mixer,
            d_model,
            nhead,
            dropout=dropout,
            activation=activation,
            padding_isolation=padding_isolation,
            **(mixer_kwargs or {}),
        )
        self.conv = MaskedConvolutionModule(
            d_model,
            kernel_size,
            activation=activation,
            dropout=dropout,
            padding_isolation=padding_isolation,
        )
        self.ffn2 = ffn()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Maps (B, T, D) to (B, T, D); with ``padding_isolation``, padded
        frames come out as zeros."""
        isolate = pad_mask if self.padding_isolation else None
        x = x + 0.5 * self.ffn1(x)
        x = x + zero_padded(self.mixer(self.mixer_norm(x), pad_mask, pos_emb), isolate)
        x = x + self.conv(x, pad_mask)
        x = self.norm(x + 0.5 * self.ffn2(x))
        return zero_padded(x, isolate)


class ConformerEncoder(nn.Module):
    """Fbank frames to Conformer hidden states, with any token mixer.

    Arguments
    ---------
    mixer : str
        Token mixer, a key of ``lobes.nnet.mixers.MIXERS``.
    num_layers : int
        Number of Conformer layers.
    d_model : int
        Width of the encoder.
    nhead : int
        Heads of the token mixer.
    d_ffn : int
        Hidden size of the feed-forward modules.
    kernel_size : int
        Depthwise convolution kernel of the Conformer layers.
    dropout : float
        Dropout everywhere in the encoder.
    layerdrop_prob : float
        Probability to skip a whole layer during training (never in eval).
    activation : str
        Activation of the feed-forward and convolution modules (and of the
        mixers that take one): a key of ``ACTIVATIONS`` ("swish", SpeechBrain's
        Conformer default).
    n_mels : int
        Input features per frame.
    frontend_channels : list of int
        Channels of the two conv blocks of the front-end.
    frontend_kernel_sizes : list of int
        Kernels of the front-end's conv blocks.
    positional_encoding : str
        ``"auto"`` (the mixer's own choice, ``MIXERS[mixer]``: relative for
        ``mhsa``, none for ``hypermixing`` which has its own, absolute sine
        otherwise), ``"relative"``, ``"absolute"`` or ``"none"``.
    padding_isolation : bool
        True (default): padded frames never reach real frames (see the module
        docstring). False: SpeechBrain's and the authors' numbers exactly.
    init : str
        ``"xavier_normal"`` (default, SpeechBrain's ``TransformerASR``):
        every parameter of two or more dimensions after the front-end is
        re-drawn with ``xavier_normal_``. ``"default"``: each module's own
        initialisation.
    mixer_kwargs : dict, optional
        Extra arguments of the token mixer.

    Example
    -------
    >>> enc = ConformerEncoder("fastformer", num_layers=2, d_model=32,
    ...                        nhead=4, d_ffn=64, kernel_size=3)
    >>> feats = torch.rand(2, 40, 80)
    >>> out, hidden = enc(feats, torch.tensor([1.0, 0.5]), return_hidden=True)
    >>> out.shape, len(hidden), enc.output_lengths(torch.tensor([40, 20])).tolist()
    (torch.Size([2, 10, 32]), 3, [10, 5])
    >>> ConformerEncoder.from_config(enc.config).config == enc.config
    True
    """

    def __init__(
        self,
        mixer,
        num_layers=12,
        d_model=576,
        nhead=8,
        d_ffn=2048,
        kernel_size=31,
        dropout=0.1,
        layerdrop_prob=0.05,
        activation="swish",
        n_mels=80,
        frontend_channels=(128, 32),
        frontend_kernel_sizes=(3, 3),
        positional_encoding="auto",
        padding_isolation=True,
        init="xavier_normal",
        mixer_kwargs=None,
    ):
        super().__init__()
        check_mixer_name(mixer)
        if positional_encoding == "auto":
            positional_encoding = MIXERS[mixer].positional_encoding
        for key, value, valid in (
            ("positional_encoding", positional_encoding, POSITIONAL_ENCODINGS),
            ("activation", activation, tuple(ACTIVATIONS)),
            ("init", init, INITS),
        ):
            if value not in valid:
                raise ValueError(
                    f"ConformerEncoder: {key}={value!r}; valid values: "
                    f"{', '.join(valid)}"
                )
        # Every constructor argument, as plain values: what rebuilds this
        # encoder (from_config) and what its checkpoints record.
        self.config = {
            "mixer": mixer,
            "num_layers": int(num_layers),
            "d_model": int(d_model),
            "nhead": int(nhead),
            "d_ffn": int(d_ffn),
            "kernel_size": int(kernel_size),
            "dropout": float(dropout),
            "layerdrop_prob": float(layerdrop_prob),
            "activation": activation,
            "n_mels": int(n_mels),
            "frontend_channels": [int(c) for c in frontend_channels],
            "frontend_kernel_sizes": [int(k) for k in frontend_kernel_sizes],
            "positional_encoding": positional_encoding,
            "padding_isolation": bool(padding_isolation),
            "init": init,
            "mixer_kwargs": _plain(dict(mixer_kwargs or {})),
        }
        self.d_model = d_model
        self.layerdrop_prob = layerdrop_prob
        self.positional_encoding = positional_encoding
        self.padding_isolation = padding_isolation
        self.frontend = ConvFrontEnd(
            n_mels,
            frontend_channels,
            frontend_kernel_sizes,
            dropout=dropout,
            padding_isolation=padding_isolation,
        )
        self.input_proj = nn.Linear(self.frontend.output_size, d_model)
        self.input_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            ConformerLayer(
                d_model,
                d_ffn,
                nhead,
                mixer,
                kernel_size=kernel_size,
                dropout=dropout,
                activation=ACTIVATIONS[activation],
                padding_isolation=padding_isolation,
                mixer_kwargs=mixer_kwargs,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        if init == "xavier_normal":
            for module in (self.input_proj, self.layers, self.norm):
                for param in module.parameters():
                    if param.dim() > 1:
                        nn.init.xavier_normal_(param)

    @classmethod
    def from_config(cls, config):
        """Builds the encoder described by ``config`` (``encoder.config``, or
        the ``_extra_state`` of its state dict); unknown keys are refused.

        Example
        -------
        >>> ConformerEncoder.from_config({"mixer": "mhsa", "num_layerz": 2})
        Traceback (most recent call last):
        ...
        ValueError: Unknown encoder argument(s) num_layerz. Valid arguments: ...
        """
        config = dict(config)
        check_arguments(cls, config, "encoder")
        return cls(**config)

    @property
    def num_hidden_states(self):
        """Number of hidden states returned with ``return_hidden`` (L+1)."""
        return len(self.layers) + 1

    def output_lengths(self, frame_lengths):
        """Encoder frames (LongTensor) for ``frame_lengths`` fbank frames."""
        return self.frontend.output_lengths(frame_lengths)

    def forward(self, feats, lengths=None, return_hidden=False):
        """Encodes fbank frames.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features, right-padded.
        lengths : torch.Tensor, optional
            (B,) relative lengths in [0, 1] (SpeechBrain convention).
        return_hidden : bool
            Also return the L+1 hidden states (input of the first layer, then
            each layer's output, the last one after the final LayerNorm).

        Returns
        -------
        out : torch.Tensor
            (B, T', D) with T' = ceil(T / 4); with ``padding_isolation``,
            zeros on padded frames.
        hidden : list of torch.Tensor
            Only with ``return_hidden``: L+1 tensors of shape (B, T', D).
        """
        B, T, _ = feats.shape
        if lengths is None:
            frames = torch.full((B,), T, dtype=torch.long, device=feats.device)
        else:
            frames = torch.round(lengths * T).long().clamp(1, T)
        isolate = self.padding_isolation
        if isolate:
            feats = feats * length_to_mask(frames, T).bool().unsqueeze(-1)
        x, enc_frames = self.frontend(feats, frames)
        if not isolate and lengths is not None:  # SpeechBrain's rounding
            enc_frames = torch.round(lengths * x.shape[1]).long()
        pad_mask = ~length_to_mask(enc_frames, x.shape[1]).bool()
        no_pad = None if not isolate else pad_mask

        x = self.input_drop(self.input_proj(x))
        pos_emb = None
        if self.positional_encoding == "absolute":
            x = x + sinusoidal_positions(
                x.shape[1], self.d_model, device=x.device, dtype=x.dtype
            )
        elif self.positional_encoding == "relative":
            pos_emb = self.layers[0].mixer.make_pos_emb(x)
        x = zero_padded(x, no_pad)

        hidden = [x]
        for layer in self.layers:
            skip = (
                self.training
                and self.layerdrop_prob > 0
                and torch.rand(()) < self.layerdrop_prob
            )
            if not skip:
                x = layer(x, pad_mask, pos_emb)
            hidden.append(x)
        x = zero_padded(self.norm(x), no_pad)
        hidden[-1] = x
        if return_hidden:
            return x, hidden
        return x

    def get_extra_state(self):
        """Stores the architecture (every constructor argument) in the state
        dict: a checkpoint describes the encoder that made it."""
        return dict(self.config)

    def set_extra_state(self, state):
        """Refuses a state dict made for another architecture (mixer, sizes,
        positions...). Settings that leave the weights' meaning unchanged
        (``RUNTIME_SETTINGS``: dropout, LayerDrop, padding isolation, init,
        the Mamba backend) may differ."""
        diffs = {
            k: (state[k], v)
            for k, v in _architecture(self.config).items()
            if k in state and _architecture(state)[k] != v
        }
        if diffs:
            what = ", ".join(
                f"{k}: checkpoint {c!r} vs this model {m!r}"
                for k, (c, m) in diffs.items()
            )
            raise ValueError(
                "This checkpoint was saved from a different encoder "
                f"({what}). Rebuild the encoder from the checkpoint "
                "(lobes.deploy.loading.encoder_from_checkpoint) or with its mixer and sizes."
            )


