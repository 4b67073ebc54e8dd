"""The selective state-space scan of Mamba in PyTorch: the fallback of
``lobes.nnet.mixers.mamba`` where no compiled kernel runs, and the
frame-by-frame reference the kernels are tested against.

    h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t
    y_t = C_t . h_t + D * u_t

(Gu and Dao, arXiv 2312.00752), with the shapes of ``mamba_ssm``'s
``selective_scan_fn``.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math

import torch

LOG2E = math.log2(math.e)


def _scan_chunk(a, b, h):
    """Runs ``h_t = a_t * h_{t-1} + b_t`` over the first dim, from ``h``.

    One fused multiply-add per frame on the whole (batch, N, D_in) state,
    which is far fewer memory passes than a log-depth parallel scan (that
    reads and writes the whole chunk log2(chunk) times); the per-frame Python
    cost is a few microseconds. Without autograd the states are written in
    place into ``b`` (no allocation); with autograd they are new tensors.

    Arguments
    ---------
    a, b : torch.Tensor
        (chunk, ...) decays and inputs of each frame.
    h : torch.Tensor
        (...) state before the first frame.

    Returns
    -------
    torch.Tensor
        (chunk, ...) the states h_t (``b`` itself when written in place).

    Example
    -------
    >>> a, b = torch.full((3, 1), 0.5), torch.ones(3, 1)
    >>> _scan_chunk(a, b, torch.zeros(1)).flatten()
    tensor([1.0000, 1.5000, 1.7500])
    """
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or h.requires_grad):
        states = []
        for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
            h = torch.addcmul(b_t, a_t, h)
            states.append(h)
        return torch.stack(states)
    a_ts, b_ts = a.unbind(0), b.unbind(0)
    b_ts[0].addcmul_(a_ts[0], h)
    for t in range(1, len(b_ts)):
        b_ts[t].addcmul_(a_ts[t], b_ts[t - 1])
    return b


def _time_major(x):
    """(batch, C, L) -> (L, batch, C) view, copied only if C is not the
    innermost dimension of its memory (so every op below runs on contiguous
    rows of C values)."""
    x = x.permute(2, 0, 1)
    return x if x.stride(-1) == 1 else x.contiguous()


def selective_scan(u, delta, A, B, C, D=None, chunk_size=64):
    """Selective state-space scan in pure PyTorch, chunk by chunk.

    For each chunk of ``chunk_size`` frames: the decays
    ``exp(delta_t * A)`` (computed as ``exp2(delta_t * A * log2(e))``) and
    the inputs ``delta_t * u_t * B_t`` of all its frames at once, then the
    recurrence frame by frame (``_scan_chunk``), then the outputs
    ``C_t . h_t`` of all its frames with one batched matmul. Internally
    time-major, with the state laid out (batch, N, D_in) so that every
    element-wise op runs on contiguous rows of D_in; without autograd the
    chunk's buffers are allocated once and reused (no allocation per frame
    or per chunk). Computed in float32 whatever the input dtype.

    Arguments
    ---------
    u : torch.Tensor
        (batch, D_in, L) inputs (any strides; a transposed view of
        time-major memory avoids a copy).
    delta : torch.Tensor
        (batch, D_in, L) positive steps (after softplus).
    A : torch.Tensor
        (D_in, N) state matrix (negative).
    B, C : torch.Tensor
        (batch, N, L) input and output matrices.
    D : torch.Tensor, optional
        (D_in,) skip connection.
    chunk_size : int
        Frames per chunk; memory is O(batch * chunk * D_in * N).

    Returns
    -------
    torch.Tensor
        (batch, D_in, L), as ``mamba_ssm``'s ``selective_scan_fn``; a
        transposed view of time-major memory, in the dtype of ``u``.

    Example
    -------
    >>> u, delta = torch.rand(2, 4, 10), torch.rand(2, 4, 10)
    >>> A, B, C = -torch.rand(4, 3), torch.rand(2, 3, 10), torch.rand(2, 3, 10)
    >>> torch.allclose(selective_scan(u, delta, A, B, C, chunk_size=4),
    ...                selective_scan_ref(u, delta, A, B, C), atol=1e-5)
    True
    """
    batch, d_in, length = u.shape
    n_state = A.shape[1]
    dtype = u.dtype
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D)
    )
    u_t = _time_major(u.float())  # (L, batch, D_in)
    dt_t = _time_major(delta.float())
    B_t = _time_major(B.float()).unsqueeze(-1)  # (L, batch, N, 1)
    C_t = _time_major(C.float()).unsqueeze(-2)  # (L, batch, 1, N)
    # exp(x) = exp2(x * log2(e)): exp2 is the faster kernel on CPU.
    A_t = (A.float() * LOG2E).t().contiguous()  # (N, D_in)
    du = (dt_t * u_t).unsqueeze(-2)  # (L, batch, 1, D_in)
    dt_t = dt_t.unsqueeze(-2)
    h = u_t.new_zeros(batch, n_state, d_in)
    chunk_size = max(1, min(chunk_size, length))
    if grad:
        outs = []
    else:
        y = u_t.new_empty(length, batch, 1, d_in)
        decay = u_t.new_empty(chunk_size, batch, n_state, d_in)
        inputs = u_t.new_empty(chunk_size, batch, n_state, d_in)
    for start in range(0, length, chunk_size):
        sl = slice(start, start + chunk_size)
        if grad:
            states = _scan_chunk(
                torch.exp2(dt_t[sl] * A_t), du[sl] * B_t[sl], h
            )
            outs.append(torch.matmul(C_t[sl], states))
        else:
            n = min(chunk_size, length - start)
            torch.mul(dt_t[sl], A_t, out=decay[:n]).exp2_()
            torch.mul(du[sl], B_t[sl], out=inputs[:n])
            states = _scan_chunk(decay[:n], inputs[:n], h)
            torch.matmul(C_t[sl], states, out=y[sl])
        h = states[-1] if grad else states[-1].clone()
    if grad:
        y = torch.cat(outs)
    y = y.squeeze(-2)  # (L, batch, D_in)
    if D is not None:
        y = y + u_t * D.float() if grad else y.addcmul_(u_t, D.float())
    return y.permute(1, 2, 0).to(dtype)


def selective_scan_ref(u, delta, A, B, C, D=None):
    """The same scan, one frame at a time (a slow reference for tests).

    Example
    -------
    >>> selective_scan_ref(torch.ones(1, 1, 2), torch.ones(1, 1, 2),
    ...                    -torch.ones(1, 1), torch.ones(1, 1, 2),
    ...                    torch.ones(1, 1, 2)).flatten()
    tensor([1.0000, 1.3679])
    """
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[..., t].unsqueeze(-1)
        h = torch.exp(dt * A) * h + dt * u[..., t].unsqueeze(-1) * B[
            :, None, :, t
        ]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.unsqueeze(-1) * u
    return y
