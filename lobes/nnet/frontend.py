"""The convolutional front-end of the encoder: SpeechBrain's two-block
``ConvolutionFrontEnd`` (4x time reduction), optionally padding-safe.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.nnet.CNN import Conv2d, get_padding_elem
from torch import nn

from lobes.utils.speechbrain_private import check_conv_frontend


def _reflect_pad(x, dim, left, right):
    """Reflect-pads ``x`` along ``dim`` (as ``F.pad(mode="reflect")``) by
    concatenation, which keeps the memory layout of ``x``."""
    length = x.shape[dim]
    parts = []
    if left:
        parts.append(x.narrow(dim, 1, left).flip(dim))
    parts.append(x)
    if right:
        parts.append(x.narrow(dim, length - 1 - right, right).flip(dim))
    return torch.cat(parts, dim=dim) if len(parts) > 1 else x


class ConvFrontEnd(nn.Module):
    """SpeechBrain's 2-block convolutional front-end, optionally padding-safe.

    Each block is a strided ``Conv2d`` with "same" reflect padding + LayerNorm
    + LeakyReLU + dropout
    (``speechbrain.lobes.models.convolution.ConvolutionFrontEnd``, whose
    modules and state-dict keys this holds under ``cnn.``).

    With ``padding_isolation`` (default), an utterance gives the same frames
    alone or padded in a batch: its time axis is reflected at its own end
    (SpeechBrain reflects at the end of the padded batch, i.e. into the
    padding of every utterance but the longest) and frames beyond its length
    are zeroed between blocks. Without it, the numbers are SpeechBrain's.

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
    padding_isolation : bool
        See above.
    inference_chunk : int
        In eval mode without autograd, each block runs on this many output
        frames at a time (``_block``: same numbers, a third of the peak
        memory on long utterances); 0 runs it whole.

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
        padding_isolation=True,
        inference_chunk=256,
    ):
        super().__init__()
        self.strides = tuple(strides)
        self.padding_isolation = padding_isolation
        self.inference_chunk = inference_chunk
        self.cnn = ConvolutionFrontEnd(
            input_shape=(8, 64, n_mels),
            num_blocks=len(out_channels),
            num_layers_per_block=1,
            out_channels=tuple(out_channels),
            kernel_sizes=tuple(kernel_sizes),
            strides=self.strides,
            dilations=(1,) * len(out_channels),
            residuals=(False,) * len(out_channels),
            conv_module=Conv2d,
            dropout=dropout,
        )
        check_conv_frontend(self.cnn)  # what _block assumes
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
    def _conv_padded(conv, x):
        """SpeechBrain's ``Conv2d`` kernel on already padded (B, T, F, C)
        frames, with the same numbers, without its two transposing copies.

        SpeechBrain views (B, T, F, C) as (B, C, F, T) and convolves that:
        time is the innermost spatial axis of the view but the outermost of
        the memory, so the convolution first copies the whole activation into
        that order and back (at 80 s, the largest costs of the model). Here
        the same kernel, transposed to (T, F), convolves the (B, C, T, F)
        view, which is PyTorch's ``channels_last`` layout of the very same
        memory: no copy, and the output is (B, T', F', C') in memory order.
        """
        out = nn.functional.conv2d(
            x.permute(0, 3, 1, 2),  # (B, C, T, F) view, channels_last
            conv.conv.weight.transpose(2, 3),
            conv.conv.bias,
            stride=conv.stride[::-1],
            dilation=conv.dilation[::-1],
            groups=conv.conv.groups,
        )
        return out.permute(0, 2, 3, 1)  # (B, T', F', C')

    def _block(self, block, x, lengths, chunk=None):
        """One block (conv with "same" reflect padding, norm, activation,
        dropout) on (B, T, F, C), ``chunk`` output frames at a time (None:
        all at once).

        Each chunk gathers the rows of the time-padded input its convolution
        needs (reflected at the ends; with ``padding_isolation``, at each
        utterance's own end, and frames beyond an utterance's length are
        zeroed in the output). In chunks (inference), the block's output is
        the only activation of the utterance's length that exists: neither
        the padded input nor the norm's and the activation's outputs are
        made whole. At 80 s the first block's output is 82 MB (4000 x 40 x
        128 floats); all at once, three such tensors are alive.
        """
        conv, *rest = block.convs.children()
        k_f, k_t = conv.kernel_size
        s_f, s_t = conv.stride
        d_f, d_t = conv.dilation
        pad_t = get_padding_elem(conv.in_channels, s_t, k_t, d_t)
        pad_f = get_padding_elem(conv.in_channels, s_f, k_f, d_f)
        batch, frames = x.shape[:2]
        span = d_t * (k_t - 1) + 1
        out_frames = (frames + sum(pad_t) - span) // s_t + 1
        out_lengths = torch.div(lengths + s_t - 1, s_t, rounding_mode="floor")
        chunk = chunk or out_frames
        utt = torch.arange(batch, device=x.device)[:, None]
        out = None
        for start in range(0, out_frames, chunk):
            stop = min(start + chunk, out_frames)
            # rows of the time-padded input, as indices into x
            i = torch.arange(start * s_t, (stop - 1) * s_t + span, device=x.device)
            i = (i - pad_t[0]).expand(batch, -1)
            src = torch.where(i < 0, -i, torch.where(i >= frames, 2 * (frames - 1) - i, i))
            if self.padding_isolation:  # reflect at each utterance's own end
                own = lengths.to(x.device)[:, None]
                beyond = (i >= own) & (i < own + pad_t[1])
                src = torch.where(beyond, (2 * own - 2 - i).clamp(min=0), src)
            y = self._conv_padded(conv, _reflect_pad(x[utt, src], 2, *pad_f))
            for module in rest:  # norm, activation, dropout
                y = module(y)
            if self.padding_isolation:
                t = torch.arange(start, stop, device=x.device)
                y = y * (t < out_lengths.to(x.device)[:, None])[:, :, None, None]
            if stop - start == out_frames:
                return y
            if out is None:
                out = y.new_empty(batch, out_frames, *y.shape[2:])
            out[:, start:stop] = y
        return out

    @torch.compiler.disable
    def forward(self, x, lengths):
        """Maps (B, T, n_mels) and frame counts (B,) to (B, T', C*F') and (B,).

        In eval mode without autograd each block runs ``inference_chunk``
        output frames at a time (``_block``). Kept out of ``torch.compile``
        graphs (it runs eagerly, the rest of a compiled model compiled):
        traced with dynamic shapes, PyTorch 2.9's Inductor cannot order the
        symbolic strides of the channels_last convolution view ("cannot
        determine truth value of Relational"), and a compiled front-end
        gains little (two convolutions).
        """
        inference = not self.training and not torch.is_grad_enabled()
        chunk = self.inference_chunk if inference else None
        x = x.unsqueeze(-1)  # (B, T, F, 1), as SpeechBrain's front-end does
        for block, s in zip(self.cnn.children(), self.strides):
            x = self._block(block, x, lengths, chunk)
            lengths = torch.div(lengths + s - 1, s, rounding_mode="floor")
        return x.flatten(start_dim=2), lengths
