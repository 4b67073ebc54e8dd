"""Bidirectional Mamba token mixer, with a CPU selective scan.

Written from Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (arXiv 2312.00752). A Mamba block projects each frame to an
inner size ``D_in = expand * D``, applies a causal depthwise convolution and
SiLU, then the selective state-space scan

    h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t
    y_t = C_t . h_t + D * u_t

whose step ``delta`` and matrices ``B``, ``C`` depend on the frame, gates the
result with SiLU(z) and projects back to D. ``BiMamba`` sums a forward block
and a block run on the time-reversed utterance (reversed within each
utterance's own length, so padding stays at the end and, everything being
causal, never reaches a real frame).

On CUDA, when the ``mamba-ssm`` package is installed, the scan runs its fused
kernel (``selective_scan_fn``). On a CPU, in float32, the whole block runs
fused (``lobes.nnet.mixers.cpu_scan.mamba_direction``, compiled on first
use, with or without gradients): the convolution + SiLU and the scan with
the step's softplus and the gate folded in, no states in memory, one
autograd node that recomputes what it does not keep; ``BiMamba``'s backward
block runs backwards in time inside the kernels instead of on reversed
copies. Under autocast on a CPU the projections run in its precision
around the compiled scan alone; elsewhere, and where the kernel cannot be
built, ``selective_scan`` runs the scan in PyTorch, chunk by chunk, the
recurrence frame by frame on reused buffers
(``lobes.nnet.mixers.torch_scan``). All paths use the same
parameters, with the same names as ``mamba_ssm.modules.mamba_simple.Mamba``,
so a checkpoint trained on GPU loads and runs on CPU.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lobes.nnet.mixers import cpu_scan
from lobes.nnet.mixers.common import zero_padded
from lobes.nnet.mixers.torch_scan import selective_scan, selective_scan_ref  # noqa: F401 (public here too)

BACKENDS = ("auto", "torch", "cuda", "cpu_kernel")


def _mamba_ssm_scan():
    """Returns mamba_ssm's ``selective_scan_fn``, or None if not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


@torch.compiler.disable
def _selective_scan_eager(*args):
    """``selective_scan`` (looked up at call time), kept out of
    ``torch.compile`` graphs: its loop over frames would be unrolled into
    thousands of nodes; compiled models call it eagerly (a graph break)."""
    return selective_scan(*args)


class MambaBlock(nn.Module):
    """One (unidirectional, causal) Mamba block.

    Parameters are named as in ``mamba_ssm.modules.mamba_simple.Mamba``:
    ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
    ``out_proj``.

    Arguments
    ---------
    d_model : int
        Input and output size D.
    d_state : int
        State size N per channel.
    d_conv : int
        Kernel of the causal depthwise convolution.
    expand : int
        Inner size D_in = expand * D.
    dt_rank : int or "auto"
        Rank of the delta projection ("auto": ceil(D / 16)).
    dt_min, dt_max : float
        Range of the initial step sizes.
    backend : str
        "auto": on a GPU, ``mamba-ssm``'s kernel when installed; on a CPU,
        the compiled CPU kernel (with its backward) when it builds; else the
        PyTorch scan. "torch": always the PyTorch scan. "cuda" and
        "cpu_kernel": that kernel, an error where it is missing.
    chunk_size : int
        Chunk of the PyTorch scan.

    Example
    -------
    >>> block = MambaBlock(16, d_state=4)
    >>> block(torch.rand(2, 9, 16)).shape
    torch.Size([2, 9, 16])
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        backend="auto",
        chunk_size=64,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"Mamba backend {backend!r} is not one of {BACKENDS}")
        if backend == "cuda" and _mamba_ssm_scan() is None:
            raise ImportError(
                "Mamba backend='cuda' needs the mamba-ssm package and a CUDA "
                "GPU: `pip install mamba-ssm` on a CUDA machine, or use "
                "backend='auto' (falls back to the PyTorch scan)."
            )
        if backend == "cpu_kernel" and not cpu_scan.cpu_scan_available():
            raise ImportError(
                "Mamba backend='cpu_kernel' could not build the compiled CPU "
                "scan (see the warning above: it needs a C++ compiler with "
                "OpenMP and ninja); use backend='auto' or 'torch'."
            )
        self.backend = backend
        self.chunk_size = chunk_size
        d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.d_state = d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=1e-4)
        with torch.no_grad():  # inverse of softplus
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
            .repeat(d_inner, 1)
        )
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _use_cuda_kernel(self, x):
        return (
            self.backend in ("auto", "cuda")
            and x.is_cuda
            and _mamba_ssm_scan() is not None
        )

    def _use_cpu_kernel(self, x):
        """The compiled CPU scan (forward and backward): on CPU, for
        backends auto and cpu_kernel, where it builds."""
        if self.backend not in ("auto", "cpu_kernel") or x.device.type != "cpu":
            return False
        return cpu_scan.cpu_scan_available()

    def _use_fused(self, x):
        """The fused CPU block (``cpu_scan.mamba_direction``): where the
        compiled scan runs, in float32 without autocast (under autocast the
        projections stay in its precision, with the compiled scan alone)."""
        return (
            self._use_cpu_kernel(x)
            and not torch.is_autocast_enabled("cpu")
            and x.dtype == torch.float32
            and self.in_proj.weight.dtype == torch.float32
        )

    def fused_weights(self):
        """The arguments of ``cpu_scan.mamba_direction`` after its input:
        the weights, ``A = -exp(A_log)`` and ``D``."""
        return (
            self.in_proj.weight, self.conv1d.weight, self.conv1d.bias,
            self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
            -torch.exp(self.A_log.float()), self.D, self.out_proj.weight,
        )

    def fused(self, x, lengths=None, reverse=False):
        """The block on a CPU through ``cpu_scan.mamba_direction``: (B, T, D)
        -> (B, T, D), in the order of a direction (``reverse``: backwards
        within ``lengths``, as on ``reverse_within_lengths(x)``, with the
        output at the original frames)."""
        out = cpu_scan.mamba_direction(x, *self.fused_weights(), lengths, reverse)
        return out[..., : x.shape[-1]]

    def _causal_conv_time_major(self, u):
        """The causal depthwise ``conv1d`` on time-major (B, T, D_in) frames.

        ``out_t = bias + sum_j w_j * u_{t - (k-1) + j}``, one multiply-add
        over the whole activation per tap (4 by default), instead of
        transposing to channels-first and back around ``nn.Conv1d``. The
        result is float32 (the parameters' dtype) under autocast.

        Example
        -------
        >>> block = MambaBlock(8, d_state=2)
        >>> u = torch.rand(2, 5, 16)
        >>> ref = block.conv1d(u.transpose(1, 2))[..., :5].transpose(1, 2)
        >>> torch.allclose(block._causal_conv_time_major(u), ref, atol=1e-6)
        True
        """
        weight = self.conv1d.weight[:, 0, :]  # (D_in, k)
        k = weight.shape[1]
        out = torch.addcmul(self.conv1d.bias, u, weight[:, k - 1])
        length = u.shape[1]
        for j in range(k - 1):
            shift = k - 1 - j
            if shift < length:
                out[:, shift:].addcmul_(u[:, : length - shift], weight[:, j])
        return out

    def forward(self, x):
        """Maps (B, T, D) to (B, T, D), causally."""
        length = x.shape[1]
        A = -torch.exp(self.A_log.float())
        if self._use_cuda_kernel(x):
            u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
            u = F.silu(self.conv1d(u)[..., :length])
            dt, B, C = torch.split(
                self.x_proj(u.transpose(1, 2)),
                [self.dt_rank, self.d_state, self.d_state],
                dim=-1,
            )
            B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
            delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2).contiguous()
            y = _mamba_ssm_scan()(
                u.contiguous(), delta, A, B, C, self.D.float(), z=z.contiguous(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
            return self.out_proj(y.transpose(1, 2))
        if self._use_fused(x):
            return self.fused(x)
        # PyTorch path, time-major (B, T, .) throughout: no transposing copy.
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, D_in) views
        u = F.silu(self._causal_conv_time_major(u))
        dt, B, C = torch.split(
            self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        delta = F.softplus(self.dt_proj(dt))  # (B, T, D_in)
        if self._use_cpu_kernel(x):
            y = cpu_scan.scan_forward(u, delta, A, B, C, self.D)
            return self.out_proj(y * F.silu(z))
        y = _selective_scan_eager(
            u.transpose(1, 2),
            delta.transpose(1, 2),
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D,
            self.chunk_size,
        )
        return self.out_proj(y.transpose(1, 2) * F.silu(z))


def reverse_within_lengths(x, lengths):
    """Reverses each sequence of (B, T, D) within its own length.

    Frames beyond the length stay where they are. The operation is its own
    inverse.

    Example
    -------
    >>> x = torch.arange(4.0).view(1, 4, 1)
    >>> reverse_within_lengths(x, torch.tensor([3])).flatten()
    tensor([2., 1., 0., 3.])
    """
    T = x.shape[1]
    t = torch.arange(T, device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand_as(x))


class BiMamba(nn.Module):
    """Bidirectional Mamba token mixer, as ``mamba_ssm``'s ``Block``.

    ``y = x + Mamba_fwd(n) + rev(Mamba_bwd(rev(n)))`` with ``n = RMSNorm(x)``:
    one pre-norm residual block (``mamba_ssm.modules.block.Block`` with an
    RMSNorm, eps 1e-5) whose mixer sums a forward Mamba and one run on the
    time-reversed sequence, the layout of the BEST-RQ study's Mamba runs
    (their ``MambaBlock``/``MambaWrapper`` with ``bidirectional_strategy="add"``).

    ``rev`` reverses each utterance within its own length
    (``padding_isolation=True``, default), so padding stays at the end and,
    every Mamba being causal, never reaches a real frame. With
    ``padding_isolation=False`` it flips the whole padded batch as the authors'
    code did: the backward scan of every utterance but the longest then
    starts in the padding.

    Arguments
    ---------
    d_model : int
        Input and output size D.
    nhead : int, optional
        Ignored (mixer interface).
    d_state, d_conv, expand : int
        Mamba block sizes.
    backend : str
        "auto", "torch" or "cuda" (see ``MambaBlock``).
    chunk_size : int
        Chunk of the PyTorch scan.
    norm_eps : float
        Epsilon of the RMSNorm.
    padding_isolation : bool
        See above.

    Example
    -------
    >>> mixer = BiMamba(16, d_state=4)
    >>> x = torch.rand(2, 7, 16)
    >>> pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    >>> y = mixer(x, pad)
    >>> y.shape, torch.allclose(y[1, :5], mixer(x[1:, :5])[0], atol=1e-5)
    (torch.Size([2, 7, 16]), True)
    """

    def __init__(
        self,
        d_model,
        nhead=None,
        d_state=16,
        d_conv=4,
        expand=2,
        backend="auto",
        chunk_size=64,
        norm_eps=1e-5,
        padding_isolation=True,
    ):
        super().__init__()
        kw = dict(
            d_state=d_state, d_conv=d_conv, expand=expand,
            backend=backend, chunk_size=chunk_size,
        )
        self.padding_isolation = padding_isolation
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.fwd = MambaBlock(d_model, **kw)
        self.bwd = MambaBlock(d_model, **kw)

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Mixes (B, T, D) frames; ``pad_mask`` (B, T) is True on padding."""
        h = self.norm(x.to(self.norm.weight.dtype)).to(x.dtype)
        if self.fwd._use_fused(h) and self.bwd._use_fused(h):
            # Both directions fused, the backward one run backwards in time
            # by the kernels: nothing reversed in memory.
            lengths = None
            if pad_mask is not None and self.padding_isolation:
                lengths = (~pad_mask).sum(dim=1)
                h = zero_padded(h, pad_mask)
            return x + self.fwd.fused(h) + self.bwd.fused(h, lengths, reverse=True)
        if pad_mask is None or not self.padding_isolation:
            backward = self.bwd(h.flip(1)).flip(1)
        else:
            lengths = (~pad_mask).sum(dim=1)
            h = zero_padded(h, pad_mask)
            backward = reverse_within_lengths(
                self.bwd(reverse_within_lengths(h, lengths)), lengths
            )
        return x + self.fwd(h) + backward
