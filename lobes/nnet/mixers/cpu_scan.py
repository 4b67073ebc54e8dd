"""Mamba's selective scan as a compiled CPU kernel, with autograd.

``csrc/selective_scan_cpu.cpp`` computes the scan of
``lobes.nnet.mixers.mamba.selective_scan`` in one pass over its inputs, without
writing the decays or the states (frames x N x D_in) to memory, with the
same numbers to float32 rounding (``tests/unit/test_mixers.py`` checks it
against ``selective_scan_ref``; speed in ``benchmarks/README.md``). Its
backward recomputes the states chunk by chunk from states kept at chunk
boundaries (as mamba-ssm does on GPU) instead of storing them, so training
holds no (frames x N x D_in) tensor either. ``mamba_direction`` runs a whole
Mamba block (in-projection to out-projection) with the kernel's fused
pieces: ``MambaBlock`` and ``BiMamba`` use it on CPU in float32 for
backends ``auto`` and ``cpu_kernel``, with or without gradients;
``scan_forward`` (the scan alone) serves them under autocast.

It is compiled on first use with ``torch.utils.cpp_extension`` (a C++
compiler with OpenMP and ``ninja``, about 30 s; cached under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Where it
cannot be built, ``load_cpu_scan`` warns once and returns None, and the
PyTorch scan runs instead. ``BRQ_MAMBA_CPU_KERNEL=0`` skips the attempt.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import functools
import hashlib
import os
import platform
import warnings
from pathlib import Path

import torch

from lobes.nnet.mixers.common import multiple_of_8

SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
ENV_SWITCH = "BRQ_MAMBA_CPU_KERNEL"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]


def _build_name():
    """Extension name, unique to the source, the flags, this CPU and this
    PyTorch: ``-march=native`` code from one machine must not be loaded on
    another one sharing the cache."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += next((line for line in f if line.startswith("flags")), "")
    except OSError:
        cpu += platform.processor()
    key = "|".join([SOURCE.read_text(), " ".join(CFLAGS), cpu, torch.__version__])
    return "brq_selective_scan_cpu_" + hashlib.sha1(key.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def load_cpu_scan():
    """The compiled kernel module (``scan_forward``), or None.

    None, with one warning saying why, where it cannot be built (no
    compiler, no ``ninja``, no OpenMP); None without a warning when
    ``BRQ_MAMBA_CPU_KERNEL=0``.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        return load(
            name=_build_name(),
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as err:  # any build failure: fall back, say why
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        warnings.warn(
            f"Mamba's compiled CPU scan ({SOURCE.name}) could not be built "
            f"({type(err).__name__}: {reason}); the PyTorch scan runs instead "
            f"(same numbers, slower). It needs a C++ compiler with "
            f"OpenMP and ninja (`pip install ninja`); {ENV_SWITCH}=0 skips "
            f"the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def cpu_scan_available():
    """Whether the compiled kernel is (or can be) loaded here."""
    return load_cpu_scan() is not None


BACKWARD_CHUNK = 64  # frames whose states the backward recomputes at once


class _ScanFunction(torch.autograd.Function):
    """The kernel's forward and backward as one autograd node."""

    @staticmethod
    def forward(ctx, u, delta, A_t, B, C, D):
        kernel = load_cpu_scan()
        ctx.save_for_backward(u, delta, A_t, B, C, D)
        return kernel.scan_forward(u, delta, A_t, B, C, D)

    @staticmethod
    def backward(ctx, gy):
        grads = load_cpu_scan().scan_backward(
            *ctx.saved_tensors, gy.float().contiguous(), BACKWARD_CHUNK
        )
        return tuple(
            g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)
        )


@torch.compiler.disable
def scan_forward(u, delta, A, B, C, D):
    """Selective scan, batch-major, with the compiled kernel (differentiable
    with respect to every input).

    Arguments
    ---------
    u, delta : torch.Tensor
        (batch, T, D_in) inputs and positive steps (after softplus).
    A : torch.Tensor
        (D_in, N) state matrix (negative).
    B, C : torch.Tensor
        (batch, T, N) input and output matrices.
    D : torch.Tensor
        (D_in,) skip connection.

    Returns
    -------
    torch.Tensor
        (batch, T, D_in) in the dtype of ``u``, computed in float32.

    Example
    -------
    >>> from lobes.nnet.mixers.mamba import selective_scan_ref
    >>> u, delta = torch.rand(2, 10, 20), torch.rand(2, 10, 20)
    >>> A, B, C, D = -torch.rand(20, 3), torch.rand(2, 10, 3), torch.rand(2, 10, 3), torch.rand(20)
    >>> ref = selective_scan_ref(u.mT, delta.mT, A, B.mT, C.mT, D).mT
    >>> not cpu_scan_available() or torch.allclose(
    ...     scan_forward(u, delta, A, B, C, D), ref, atol=1e-5)
    True
    """
    if load_cpu_scan() is None:
        raise RuntimeError(
            f"Mamba's compiled CPU scan is not available here (see the "
            f"warning above, or {ENV_SWITCH}=0); use backend='torch'."
        )
    dtype = u.dtype
    y = _ScanFunction.apply(
        *(t.float().contiguous() for t in (u, delta)),
        A.float().t().contiguous(),
        *(t.float().contiguous() for t in (B, C, D)),
    )
    return y.to(dtype)


# --------------------------------------------------------------------------
# One direction of a Mamba block, fused (``MambaBlock`` and ``BiMamba`` on a
# CPU): the in-projection, the causal convolution + SiLU (compiled), the x-
# and dt-projections, the scan with the step's softplus and the SiLU gate
# folded in (compiled), the out-projection; one autograd node that keeps
# only its input, the in-projection's output and the x-projection's output
# (mamba-ssm's ``mamba_inner_fn`` keeps about as much), and recomputes the
# rest in its backward.


def _pad_rows(w, rows):
    """``w`` (r, c) with zero rows up to ``rows`` (``w`` itself if r == rows)."""
    return w if w.shape[0] == rows else torch.nn.functional.pad(w, (0, 0, 0, rows - w.shape[0]))


def _pad_cols(w, cols):
    """``w`` (..., c) with zero columns up to ``cols``."""
    return w if w.shape[-1] == cols else torch.nn.functional.pad(w, (0, cols - w.shape[-1]))


def _direction_forward(h, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w,
                       lengths, reverse):
    """The fused forward of one direction. Returns its output, (B, T, d8)
    with d8 = D rounded up to a multiple of 8 (the columns past D are
    zeros), and what the backward needs.

    The products whose output width is not a multiple of 8 (the
    out-projection to D = 474 at the paper's width, the x-projection to
    dt_rank + 2N = 62) run on zero-padded weights: MKL's sgemm is ~1.5x
    slower on such widths on this CPU (57 vs 85-90 GFLOP/s), and padded
    rows change no other output."""
    kernel = load_cpu_scan()
    batch, T, d = h.shape
    d_in = D.shape[0]
    n_state = A.shape[1]
    rank = dt_w.shape[1]
    xz = torch.mm(h.reshape(batch * T, d), in_w.t()).view(batch, T, 2 * d_in)
    u, z = xz[..., :d_in], xz[..., d_in:]
    uc = kernel.conv_silu_forward(u, conv_w, conv_b, lengths, reverse)
    x_w8 = _pad_rows(x_w, multiple_of_8(x_w.shape[0]))
    xdbl = torch.mm(uc.view(batch * T, d_in), x_w8.t())  # (BT, r8)
    dt = torch.mm(xdbl[:, :rank], dt_w.t()).view(batch, T, d_in)
    B = xdbl[:, rank:rank + n_state].view(batch, T, n_state)
    C = xdbl[:, rank + n_state:rank + 2 * n_state].view(batch, T, n_state)
    A_t = A.t().contiguous()
    gated = kernel.scan_fused_forward(uc, dt, dt_b, A_t, B, C, D, z, lengths, reverse)
    out_w8 = _pad_rows(out_w, multiple_of_8(d))
    out = torch.mm(gated.view(batch * T, d_in), out_w8.t()).view(batch, T, -1)
    return out, (xz, xdbl, x_w8, out_w8, A_t)


class _DirectionFunction(torch.autograd.Function):
    """One fused direction as one autograd node (see ``mamba_direction``)."""

    @staticmethod
    def forward(ctx, h, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w, lengths, reverse):
        out, (xz, xdbl, x_w8, out_w8, A_t) = _direction_forward(
            h, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w, lengths, reverse
        )
        ctx.save_for_backward(h, xz, xdbl, in_w, conv_w, conv_b, x_w8, dt_w, dt_b, A_t, D,
                              out_w8, lengths)
        ctx.reverse = reverse
        ctx.x_rows = x_w.shape[0]
        return out

    @staticmethod
    def backward(ctx, gout):
        kernel = load_cpu_scan()
        (h, xz, xdbl, in_w, conv_w, conv_b, x_w8, dt_w, dt_b, A_t, D, out_w8,
         lengths) = ctx.saved_tensors
        reverse = ctx.reverse
        batch, T, d = h.shape
        d_in, n_state, rank = D.shape[0], A_t.shape[0], dt_w.shape[1]
        BT = batch * T
        gout = gout.reshape(BT, -1).contiguous()
        u, z = xz[..., :d_in], xz[..., d_in:]
        # recomputed: the convolution's output and the step
        uc = kernel.conv_silu_forward(u, conv_w, conv_b, lengths, reverse)
        dt = torch.mm(xdbl[:, :rank], dt_w.t()).view(batch, T, d_in)
        B = xdbl[:, rank:rank + n_state].view(batch, T, n_state)
        C = xdbl[:, rank + n_state:rank + 2 * n_state].view(batch, T, n_state)
        g_gated = torch.mm(gout, out_w8).view(batch, T, d_in)
        gxz = torch.empty_like(xz)
        guc, gdt, g_dt_b, gA_t, gB, gC, gD, gated = kernel.scan_fused_backward(
            uc, dt, dt_b, A_t, B, C, D, z, g_gated, lengths, reverse, BACKWARD_CHUNK,
            gxz[..., d_in:],
        )
        g_out_w = torch.mm(gout.t(), gated.view(BT, d_in))[:d]
        gdt = gdt.view(BT, d_in)
        g_dt_w = torch.mm(gdt.t(), xdbl[:, :rank])
        gxdbl = torch.zeros_like(xdbl)
        torch.mm(gdt, dt_w, out=gxdbl[:, :rank])
        gxdbl[:, rank:rank + n_state] = gB.view(BT, n_state)
        gxdbl[:, rank + n_state:rank + 2 * n_state] = gC.view(BT, n_state)
        guc = guc.view(BT, d_in).addmm_(gxdbl, x_w8)
        g_x_w = torch.mm(gxdbl.t(), uc.view(BT, d_in))[:ctx.x_rows]
        g_conv_w, g_conv_b = kernel.conv_silu_backward(
            u, conv_w, conv_b, guc.view(batch, T, d_in), lengths, reverse, gxz[..., :d_in]
        )
        # products whose width is D: on zero-padded operands (see
        # _direction_forward)
        d8 = multiple_of_8(d)
        gxz2 = gxz.view(BT, 2 * d_in)
        h8 = _pad_cols(h.reshape(BT, d), d8)
        g_in_w = torch.mm(gxz2.t(), h8)[:, :d]
        gh = torch.mm(gxz2, _pad_cols(in_w, d8))[:, :d].reshape(batch, T, d)
        return (gh, g_in_w, g_conv_w, g_conv_b, g_x_w, g_dt_w, g_dt_b, gA_t.t(), gD,
                g_out_w, None, None)


@torch.compiler.disable
def mamba_direction(h, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w,
                    lengths=None, reverse=False):
    """One Mamba block's mixing (in-projection to out-projection), fused, in
    the order of a direction, differentiable with respect to ``h`` and every
    weight.

    Arguments
    ---------
    h : torch.Tensor
        (batch, T, d) float32 input.
    in_w, conv_w, conv_b, x_w, dt_w, dt_b, out_w : torch.Tensor
        The block's weights: ``in_proj.weight`` (2 D_in, d), the
        convolution's taps (D_in, k) and bias, ``x_proj.weight``
        (dt_rank + 2N, D_in), ``dt_proj.weight`` (D_in, dt_rank) and bias,
        ``out_proj.weight`` (d, D_in).
    A : torch.Tensor
        (D_in, N) state matrix (``-exp(A_log)``).
    D : torch.Tensor
        (D_in,) skip connection.
    lengths : torch.Tensor, optional
        (batch,) frames of each utterance; with ``reverse``, each utterance
        is run from its last frame to its first, then its padding in order
        (``reverse_within_lengths``). None: every utterance has T frames.
    reverse : bool
        Run the direction backwards in time.

    Returns
    -------
    torch.Tensor
        (batch, T, d8): the block's output in the first d columns (d8 = d
        rounded up to a multiple of 8; the other columns are zeros).

    Example
    -------
    >>> from lobes.nnet.mixers.mamba import MambaBlock
    >>> block = MambaBlock(8, d_state=4).eval()
    >>> x = torch.randn(2, 5, 8)
    >>> out = mamba_direction(x, *block.fused_weights())
    >>> not cpu_scan_available() or torch.allclose(out[..., :8], block(x), atol=1e-5)
    True
    """
    if load_cpu_scan() is None:
        raise RuntimeError(
            f"Mamba's compiled CPU scan is not available here (see the "
            f"warning above, or {ENV_SWITCH}=0); use backend='torch'."
        )
    lengths = (
        torch.empty(0, dtype=torch.long)
        if lengths is None
        else lengths.to(device="cpu", dtype=torch.long).contiguous()
    )
    args = (
        h.float().contiguous(), in_w, conv_w.reshape(conv_w.shape[0], -1), conv_b, x_w,
        dt_w, dt_b, A.float(), D, out_w,
    )
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _DirectionFunction.apply(*args, lengths, reverse)
    return _direction_forward(*args, lengths, reverse)[0]
