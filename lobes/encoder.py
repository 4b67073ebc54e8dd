"""A Conformer encoder whose token mixer is chosen by name.

The encoder turns 80-dim fbank frames (10 ms) into 40 ms hidden states:

    fbank (B, T, 80)
      -> ConvFrontEnd: 2 conv blocks, stride 2 each   (B, T/4, 640)
      -> Linear to d_model, dropout, positions        (B, T/4, D)
      -> N x ConformerLayer (pre-norm macaron):
             x + 1/2 FFN(x) -> x + Mixer(LN(x)) -> x + Conv(x) -> LN(x + 1/2 FFN(x))
      -> LayerNorm

The token-mixer slot takes any of ``MIXERS``: ``mhsa`` (relative-position
MHSA, the paper's baseline), ``mhsa_sdpa`` (fused scaled-dot-product
attention), ``hypermixing``, ``fastformer``, ``summarymixing``,
``summarymixing_lite`` and ``mamba`` (bidirectional). An unknown name raises a
``ValueError`` listing the valid ones (SpeechBrain's own Conformer silently
accepts an unknown ``attention_type``).

Padded frames never change the outputs on real frames: they are zeroed
between the front-end's conv blocks, before the depthwise convolution of every
Conformer layer (SpeechBrain's ``ConvolutionModule`` only masks its output, so
padding leaks into the last 15 real frames there) and after every layer.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import functools
import math

import torch
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.nnet.CNN import Conv2d, get_padding_elem
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import PositionalwiseFeedForward
from torch import nn

from lobes.mixers import MIXERS, POSITIONAL_ENCODINGS, build_mixer, check_mixer_name
from lobes.mixers.common import sinusoidal_positions, zero_padded

class ConvFrontEnd(nn.Module):
    """SpeechBrain's 2-block convolutional front-end, made padding-safe.

    Each block is a strided ``Conv2d`` + LayerNorm + activation
    (``speechbrain.lobes.models.convolution.ConvolutionFrontEnd``); between
    blocks, frames beyond each utterance's length are zeroed, and the "same"
    padding pads with zeros (SpeechBrain's default reflects the edge frames,
    which a padded batch cannot reproduce), so that an utterance gives the
    same frames alone or padded in a batch.

    Arguments
    ---------
    n_mels : int
        Number of input features per frame.
    out_channels : tuple of int
        Channels of each block.
    kernel_sizes : tuple of int
        Kernel size of each block.
    strides : tuple of int
        Stride of each block, in time and frequency.
    dropout : float
        Dropout after each block.

    Example
    -------
    >>> fe = ConvFrontEnd(80)
    >>> out, lens = fe(torch.rand(2, 101, 80), torch.tensor([101, 50]))
    >>> out.shape, lens.tolist(), fe.output_size
    (torch.Size([2, 26, 640]), [26, 13], 640)
    """

    def __init__(
        self,
        n_mels=80,
        out_channels=(128, 32),
        kernel_sizes=(3, 3),
        strides=(2, 2),
        dropout=0.1,
    ):
        super().__init__()
        self.strides = tuple(strides)
        self.cnn = ConvolutionFrontEnd(
            input_shape=(8, 64, n_mels),
            num_blocks=len(out_channels),
            num_layers_per_block=1,
            out_channels=tuple(out_channels),
            kernel_sizes=tuple(kernel_sizes),
            strides=self.strides,
            dilations=(1,) * len(out_channels),
            residuals=(False,) * len(out_channels),
            conv_module=functools.partial(Conv2d, padding_mode="constant"),
            dropout=dropout,
        )
        for module in self.cnn.modules():  # what _block and _conv_time_major assume
            assert getattr(module, "reduce_conv", None) is None  # no residual blocks
            if isinstance(module, Conv2d):
                assert module.padding == "same" and module.padding_mode == "constant"
                assert not (module.swap or module.skip_transpose or module.max_norm)
        freq = n_mels
        for s in self.strides:
            freq = math.ceil(freq / s)
        self.output_size = out_channels[-1] * freq
        self.downsampling = math.prod(self.strides)

    def output_lengths(self, lengths):
        """Frames out for ``lengths`` frames in (a LongTensor)."""
        for s in self.strides:
            lengths = torch.div(lengths + s - 1, s, rounding_mode="floor")
        return lengths

    @staticmethod
    def _conv_time_major(conv, x):
        """SpeechBrain's ``Conv2d`` (``padding="same"``) on (B, T, F, C), with
        the same numbers, without its two transposing copies.

        SpeechBrain views (B, T, F, C) as (B, C, F, T) and convolves that:
        time is the innermost spatial axis of the view but the outermost of
        the memory, so the convolution first copies the whole activation into
        that order and back (at 80 s, the largest costs of the model, growing
        faster than T as the strided copy leaves the caches). Here the same
        kernel, transposed to (T, F), convolves the (B, C, T, F) view, which is
        PyTorch's ``channels_last`` layout of the very same memory: no copy,
        and the output is (B, T', F', C') in memory order again.
        """
        k_f, k_t = conv.kernel_size
        s_f, s_t = conv.stride
        d_f, d_t = conv.dilation
        padding = get_padding_elem(conv.in_channels, s_t, k_t, d_t) + get_padding_elem(
            conv.in_channels, s_f, k_f, d_f
        )  # (time left, right, freq left, right), as SpeechBrain pads
        x = nn.functional.pad(x, (0, 0, padding[2], padding[3], padding[0], padding[1]))
        out = nn.functional.conv2d(
            x.permute(0, 3, 1, 2),  # (B, C, T, F) view, channels_last
            conv.conv.weight.transpose(2, 3),
            conv.conv.bias,
            stride=(s_t, s_f),
            dilation=(d_t, d_f),
            groups=conv.conv.groups,
        )
        return out.permute(0, 2, 3, 1)  # (B, T', F', C')

    def _block(self, block, x):
        """One SpeechBrain ``ConvBlock`` (conv, LayerNorm, activation,
        dropout; no residual) on (B, T, F, C)."""
        for module in block.convs.children():
            if isinstance(module, Conv2d):
                x = self._conv_time_major(module, x)
            else:
                x = module(x)
        return x

    def forward(self, x, lengths):
        """Maps (B, T, n_mels) and frame counts (B,) to (B, T', C*F') and (B,)."""
        x = x.unsqueeze(-1)  # (B, T, F, 1), as SpeechBrain's front-end does
        for block, s in zip(self.cnn.children(), self.strides):
            x = self._block(block, x)
            lengths = torch.div(lengths + s - 1, s, rounding_mode="floor")
            valid = length_to_mask(lengths, x.shape[1]).bool()
            x = x * valid[:, :, None, None]
        return x.flatten(start_dim=2), lengths


class MaskedConvolutionModule(ConvolutionModule):
    """SpeechBrain's Conformer convolution module with padded frames zeroed
    before the depthwise convolution, not only after it.

    Same parameters (and state-dict keys) as
    ``speechbrain.lobes.models.transformer.Conformer.ConvolutionModule``.

    Example
    -------
    >>> conv = MaskedConvolutionModule(8, kernel_size=3)
    >>> x = torch.rand(1, 6, 8)
    >>> pad = torch.tensor([[False] * 4 + [True] * 2])
    >>> torch.allclose(conv(x, pad)[:, :4], conv(x[:, :4]), atol=1e-6)
    True
    """

    def forward(self, x, pad_mask=None):
        """Convolves ``x`` (B, T, D); ``pad_mask`` (B, T) is True on padding."""
        out = self.layer_norm(x).transpose(1, 2)
        out = self.bottleneck(out)
        if pad_mask is not None:
            out = out.masked_fill(pad_mask.unsqueeze(1), 0.0)
        out = self.conv(out)
        if self.causal:
            out = out[..., : -self.padding]
        out = self.after_conv(out.transpose(1, 2))
        return zero_padded(out, pad_mask)


class ConformerLayer(nn.Module):
    """One pre-norm macaron Conformer layer with a pluggable token mixer.

    Arguments
    ---------
    d_model : int
        Feature size D.
    d_ffn : int
        Hidden size of the two feed-forward modules.
    nhead : int
        Heads of the token mixer (where it has heads).
    mixer : str
        Token mixer name, a key of ``MIXERS``.
    kernel_size : int
        Kernel of the depthwise convolution.
    dropout : float
        Dropout of the residual branches.
    activation : type
        Activation of the feed-forward modules.
    mixer_kwargs : dict, optional
        Extra arguments of the mixer.

    Example
    -------
    >>> layer = ConformerLayer(16, 32, 4, "summarymixing",
    ...                        mixer_kwargs={"local_proj_hid_dim": [32],
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
        activation=nn.GELU,
        mixer_kwargs=None,
    ):
        super().__init__()

        def ffn():
            return nn.Sequential(
                nn.LayerNorm(d_model),
                PositionalwiseFeedForward(
                    d_ffn=d_ffn,
                    input_size=d_model,
                    dropout=dropout,
                    activation=activation,
                ),
                nn.Dropout(dropout),
            )

        self.ffn1 = ffn()
        self.mixer_norm = nn.LayerNorm(d_model)
        self.mixer = build_mixer(
            mixer, d_model, nhead, dropout=dropout, **(mixer_kwargs or {})
        )
        self.conv = MaskedConvolutionModule(
            d_model, kernel_size, activation=Swish, dropout=dropout
        )
        self.ffn2 = ffn()
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Maps (B, T, D) to (B, T, D); padded frames come out as zeros."""
        x = x + 0.5 * self.ffn1(x)
        x = x + self.drop(self.mixer(self.mixer_norm(x), pad_mask, pos_emb))
        x = x + self.conv(x, pad_mask)
        x = self.norm(x + 0.5 * self.ffn2(x))
        return zero_padded(x, pad_mask)


class ConformerEncoder(nn.Module):
    """Fbank frames to Conformer hidden states, with any token mixer.

    Arguments
    ---------
    mixer : str
        Token mixer, a key of ``MIXERS``.
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
    n_mels : int
        Input features per frame.
    frontend_channels : tuple of int
        Channels of the two conv blocks of the front-end.
    frontend_kernel_sizes : tuple of int
        Kernels of the front-end's conv blocks.
    positional_encoding : str
        ``"auto"`` (the mixer's own choice: relative for ``mhsa``, none for
        ``hypermixing`` which has its own, absolute sine otherwise),
        ``"relative"``, ``"absolute"`` or ``"none"``.
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
        layerdrop_prob=0.0,
        n_mels=80,
        frontend_channels=(128, 32),
        frontend_kernel_sizes=(3, 3),
        positional_encoding="auto",
        mixer_kwargs=None,
    ):
        super().__init__()
        check_mixer_name(mixer)
        if positional_encoding == "auto":
            positional_encoding = MIXERS[mixer].positional_encoding
        if positional_encoding not in POSITIONAL_ENCODINGS:
            raise ValueError(
                f"positional_encoding={positional_encoding!r}: use 'auto' or "
                f"one of {POSITIONAL_ENCODINGS}"
            )
        self.config = {
            "mixer": mixer,
            "num_layers": num_layers,
            "d_model": d_model,
            "d_ffn": d_ffn,
            "nhead": nhead,
            "n_mels": n_mels,
            "positional_encoding": positional_encoding,
        }
        self.d_model = d_model
        self.layerdrop_prob = layerdrop_prob
        self.positional_encoding = positional_encoding
        self.frontend = ConvFrontEnd(
            n_mels, frontend_channels, frontend_kernel_sizes, dropout=dropout
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
                mixer_kwargs=mixer_kwargs,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

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
            (B, T', D) with T' = ceil(T / 4); zeros on padded frames.
        hidden : list of torch.Tensor
            Only with ``return_hidden``: L+1 tensors of shape (B, T', D).
        """
        B, T, _ = feats.shape
        if lengths is None:
            frames = torch.full((B,), T, dtype=torch.long, device=feats.device)
        else:
            frames = torch.round(lengths * T).long().clamp(1, T)
        valid_in = length_to_mask(frames, T).bool()
        x, enc_frames = self.frontend(feats * valid_in.unsqueeze(-1), frames)
        pad_mask = ~length_to_mask(enc_frames, x.shape[1]).bool()

        x = self.input_drop(self.input_proj(x))
        pos_emb = None
        if self.positional_encoding == "absolute":
            x = x + sinusoidal_positions(
                x.shape[1], self.d_model, device=x.device, dtype=x.dtype
            )
        elif self.positional_encoding == "relative":
            pos_emb = self.layers[0].mixer.make_pos_emb(x)
        x = zero_padded(x, pad_mask)

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
        x = zero_padded(self.norm(x), pad_mask)
        hidden[-1] = x
        if return_hidden:
            return x, hidden
        return x

    def get_extra_state(self):
        """Stores the architecture in the state dict, to check on load."""
        return dict(self.config)

    def set_extra_state(self, state):
        """Refuses a state dict made for another mixer or size."""
        diffs = {
            k: (state.get(k), v)
            for k, v in self.config.items()
            if state.get(k, v) != v
        }
        if diffs:
            what = ", ".join(
                f"{k}: checkpoint {c!r} vs this model {m!r}"
                for k, (c, m) in diffs.items()
            )
            raise ValueError(
                "This checkpoint was saved from a different encoder "
                f"({what}). Load it with the encoder YAML it was trained "
                "with (hparams/encoder_<mixer>.yaml and the same sizes)."
            )
