"""Mamba's selective scan as a compiled CPU kernel, with autograd.

``csrc/selective_scan_cpu.cpp`` computes the scan of
``lobes.nnet.mixers.mamba.selective_scan`` in one pass over its inputs, without
writing the decays or the states (frames x N x D_in) to memory, with the
same numbers to float32 rounding (``tests/unit/test_mixers.py`` checks it
against ``selective_scan_ref``; speed in ``benchmarks/README.md``). Its
backward recomputes the states chunk by chunk from states kept at chunk
boundaries (as mamba-ssm does on GPU) instead of storing them, so training
holds no (frames x N x D_in) tensor either. ``MambaBlock`` uses it on CPU
for backends ``auto`` and ``cpu_kernel``, with or without gradients.

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
