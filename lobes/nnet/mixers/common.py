"""What every token mixer shares: padding helpers, pooling, positions, and
the CPU matrix product on widths rounded up to a multiple of 8.

The mixer interface (``lobes.nnet.mixers``) passes a ``pad_mask`` (B, T) that is
True on padded frames. These helpers keep padding out of the computations
that cross frames (means and softmax poolings over time) and zero it in the
outputs; ``sinusoidal_positions`` gives the absolute positions used by the
encoder and inside HyperMixing, for any length.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math
from collections import OrderedDict

import torch


def zero_padded(x, pad_mask):
    """Returns ``x`` with the frames flagged in ``pad_mask`` set to zero.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, D) frames.
    pad_mask : torch.Tensor or None
        (B, T) bool, True on padded frames. ``None`` returns ``x`` unchanged.

    Returns
    -------
    torch.Tensor
        (B, T, D), zero where ``pad_mask`` is True.

    Example
    -------
    >>> x = torch.ones(1, 3, 2)
    >>> zero_padded(x, torch.tensor([[False, False, True]]))[0, :, 0]
    tensor([1., 1., 0.])
    """
    if pad_mask is None:
        return x
    return x.masked_fill(pad_mask.unsqueeze(-1), 0.0)


def masked_mean(x, pad_mask=None):
    """Mean over time of the valid frames of ``x`` (B, T, D) -> (B, 1, D).

    Accumulated in float32 (a sum over thousands of fp16 frames could
    overflow) and returned in the dtype of ``x``. An utterance without any
    valid frame gives zeros.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, D) frames.
    pad_mask : torch.Tensor, optional
        (B, T) bool, True on padded frames.

    Returns
    -------
    torch.Tensor
        (B, 1, D) means.

    Example
    -------
    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(x, torch.tensor([[False, False, True]]))
    tensor([[[2.]]])
    """
    xf = x.float()
    if pad_mask is None:
        return xf.mean(dim=1, keepdim=True).to(x.dtype)
    valid = (~pad_mask).unsqueeze(-1).float()
    total = (xf * valid).sum(dim=1, keepdim=True)
    return (total / valid.sum(dim=1, keepdim=True).clamp(min=1)).to(x.dtype)


def masked_softmax_pool(scores, values, pad_mask=None):
    """Pools ``values`` over time with the softmax over time of ``scores``.

    The softmax is computed in float32 (safe under fp16/bf16 autocast).
    Padded frames are filled with the most negative float32 before the softmax
    and their weight is then set to exactly zero, so an utterance made only of
    padding pools to zeros instead of NaN.

    Arguments
    ---------
    scores : torch.Tensor
        (B, T, H) one score per frame and head.
    values : torch.Tensor
        (B, T, H, d) the vectors to pool.
    pad_mask : torch.Tensor, optional
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
    scores = scores.float()
    if pad_mask is not None:
        padded = pad_mask.unsqueeze(-1)
        scores = scores.masked_fill(padded, torch.finfo(torch.float32).min)
        weights = torch.softmax(scores, dim=1).masked_fill(padded, 0.0)
    else:
        weights = torch.softmax(scores, dim=1)
    weights = weights.to(values.dtype)
    return torch.einsum("bth,bthd->bhd", weights, values).unsqueeze(1)


def sinusoidal_positions(length, d_model, device=None, dtype=None):
    """The Transformer's sine/cosine positions (Vaswani et al., 2017).

    ``pe[t, 2i] = sin(t / 10000^(2i/d))`` and ``pe[t, 2i+1] = cos(...)``,
    computed on the fly (no maximum length).

    Arguments
    ---------
    length : int
        Number of positions T.
    d_model : int
        Feature size D.
    device, dtype : optional
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        (1, T, D).

    Example
    -------
    >>> sinusoidal_positions(3, 4)[0, 0]
    tensor([0., 1., 0., 1.])
    """
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
        * (-math.log(10000.0) / d_model)
    )
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)[:, : d_model // 2]
    return pe.unsqueeze(0).to(dtype or torch.float32)


_POSITIONS = OrderedDict()  # (length, d_model, device, dtype) -> (1, T, D)
_POSITIONS_KEPT = 4


def cached_sinusoidal_positions(length, d_model, device=None, dtype=None):
    """``sinusoidal_positions``, kept for the last few shapes.

    The same tensor (the same values) for every call with the same length,
    width, device and dtype, instead of ``T x D / 2`` sines and cosines per
    call (HyperMixing adds them in every layer). Callers must not modify it
    in place. Created outside inference mode, so that it serves training
    and inference alike; computed afresh while ``torch.compile`` traces.

    Example
    -------
    >>> a = cached_sinusoidal_positions(7, 4)
    >>> a is cached_sinusoidal_positions(7, 4), torch.equal(a, sinusoidal_positions(7, 4))
    (True, True)
    """
    if torch.compiler.is_compiling():
        return sinusoidal_positions(length, d_model, device=device, dtype=dtype)
    key = (length, d_model, torch.device(device or "cpu"), dtype or torch.float32)
    pe = _POSITIONS.get(key)
    if pe is None:
        with torch.inference_mode(False), torch.no_grad():
            pe = sinusoidal_positions(length, d_model, device=device, dtype=dtype)
        _POSITIONS[key] = pe
        while len(_POSITIONS) > _POSITIONS_KEPT:
            _POSITIONS.popitem(last=False)
    else:
        _POSITIONS.move_to_end(key)
    return pe


def multiple_of_8(n):
    """``n`` rounded up to a multiple of 8.

    Example
    -------
    >>> multiple_of_8(474), multiple_of_8(480)
    (480, 480)
    """
    return -(-n // 8) * 8


def linear_out8(x, weight, bias=None):
    """``torch.nn.functional.linear(x, weight, bias)``, on a CPU computed
    with the output width rounded up to a multiple of 8 (zero rows appended
    to ``weight``, the extra outputs cut off). MKL's sgemm is slow on output
    widths such as Mamba's paper width 474: with the Conformer's two
    feed-forward products and its convolution module's pointwise product
    to 474 run this way, Mamba's 12-layer encoder runs an 80-s forward in
    ~0.88 of the time (benchmarks/README.md). The same numbers up to
    float32 rounding; elsewhere, and on widths already a multiple of 8,
    plain ``linear``.

    Arguments
    ---------
    x : torch.Tensor
        (..., in) inputs.
    weight : torch.Tensor
        (out, in).
    bias : torch.Tensor, optional
        (out,).

    Returns
    -------
    torch.Tensor
        (..., out).

    Example
    -------
    >>> x, w, b = torch.randn(5, 3), torch.randn(6, 3), torch.randn(6)
    >>> torch.allclose(linear_out8(x, w, b), torch.nn.functional.linear(x, w, b), atol=1e-6)
    True
    """
    out = weight.shape[0]
    rows = multiple_of_8(out)
    if rows == out or x.device.type != "cpu":
        return torch.nn.functional.linear(x, weight, bias)
    weight = torch.nn.functional.pad(weight, (0, 0, 0, rows - out))
    if bias is not None:
        bias = torch.nn.functional.pad(bias, (0, rows - out))
    return torch.nn.functional.linear(x, weight, bias)[..., :out]
