"""Every token mixer: its paper's equations (or SpeechBrain's module), padding
never reaching real frames, linear memory, parameter counts.

For each mixer: finite gradients everywhere; garbage in the padding changes
nothing on real frames; an utterance made only of padding gives no NaN;
bf16 autocast runs. The linear mixers never produce a T x T tensor, forward
or backward. The references below are written from the papers' equations
(and the BEST-RQ study's layouts), frame by frame, with loops.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_MIXERS, LINEAR_MIXERS, small_mixer
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.hypermixing import HyperMixing as SBHyperMixing
from torch.utils._python_dispatch import TorchDispatchMode

import lobes.nnet.mixers.mamba as mamba
from lobes.nnet.mixers import cpu_scan
from lobes.nnet.mixers.common import sinusoidal_positions
from lobes.nnet.mixers.fastformer import Fastformer
from lobes.nnet.mixers.hypermixing import HyperMixing
from lobes.nnet.mixers.mamba import (
    BiMamba,
    MambaBlock,
    selective_scan,
    selective_scan_ref,
)
from lobes.nnet.mixers.summarymixing import SummaryMixing

D = 16


def pad_mask_of(lengths, T):
    """(B, T) bool, True on padded frames."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def call(mixer, x, pad_mask=None):
    pos = mixer.make_pos_emb(x) if hasattr(mixer, "make_pos_emb") else None
    return mixer(x, pad_mask, pos)


# --------------------------------------------------------------------------
# Every mixer: padding, gradients, precision.


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_padding_garbage_never_changes_real_frames(name):
    mixer = small_mixer(name).eval()
    alone = torch.randn(1, 11, D)
    batch = torch.randn(3, 19, D) * 1e3  # large garbage in the padding
    batch[0, :11] = alone[0]
    pad = pad_mask_of([11, 19, 15], 19)
    with torch.no_grad():
        ref = call(mixer, alone)
        out = call(mixer, batch, pad)
        no_mask = call(mixer, batch[1:2])
    torch.testing.assert_close(out[0, :11], ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], no_mask[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_forward_backward_gives_finite_gradients(name):
    mixer = small_mixer(name, dropout=0.1).train()
    x = torch.randn(3, 13, D, requires_grad=True)
    pad = pad_mask_of([13, 9, 4], 13)
    out = call(mixer, x, pad)
    (out * (~pad).unsqueeze(-1)).sum().backward()  # real frames only
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(x.grad).all()
    assert x.grad[pad].abs().max() == 0  # padded inputs cannot matter


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_an_utterance_made_only_of_padding_gives_no_nan(name):
    mixer = small_mixer(name).train()
    x = torch.randn(2, 6, D, requires_grad=True)
    out = call(mixer, x, pad_mask_of([6, 0], 6))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_runs_under_bf16_autocast(name):
    mixer = small_mixer(name).eval()
    x = torch.randn(2, 30, D)
    pad = pad_mask_of([30, 17], 30)
    with torch.no_grad():
        ref = call(mixer, x, pad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call(mixer, x, pad)
    assert out.shape == (2, 30, D) and torch.isfinite(out).all()
    real = ~pad
    assert (out.float() - ref)[real].abs().max() < 0.25  # bf16 has ~3 digits


# --------------------------------------------------------------------------
# Linear memory: no T x T tensor, ever.

LONG_T = 20_000  # a (1, T, T) float32 tensor would take 1.6 GB


def biggest_allocation(module, *args):
    """Largest memory any single op allocates in ``module(*args)``."""
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        module(*args)
    return max(e.cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("name", LINEAR_MIXERS)
def test_no_allocation_above_100_mb_at_20000_frames(name):
    mixer = small_mixer(name, d_model=8, nhead=2).eval()
    x = torch.randn(1, LONG_T, 8)
    biggest = biggest_allocation(mixer, x, torch.zeros(1, LONG_T, dtype=torch.bool))
    assert biggest < 100e6, f"{name}: one allocation of {biggest / 1e6:.0f} MB"


def test_the_allocation_check_catches_speechbrains_quadratic_hypermixing():
    """Positive control: SpeechBrain's module allocates zeros(B, T, T)."""
    T = 6000  # 144 MB for the dummy attention weights
    sb = SBHyperMixing(8, 16, num_heads=2, max_length=T).eval()
    x = torch.randn(1, T, 8)
    assert biggest_allocation(sb, x, x, x) >= T * T * 4


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor produced by an aten op."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


def time_by_time(shapes, T):
    return [(f, s) for f, s in shapes if sum(dim == T for dim in s) >= 2]


@pytest.mark.parametrize("name", LINEAR_MIXERS)
def test_no_op_produces_a_time_by_time_tensor_forward_or_backward(name):
    T = 97  # prime, distinct from every other size here
    mixer = small_mixer(name).train()
    x = torch.randn(2, T, D, requires_grad=True)
    pad = pad_mask_of([T, 60], T)
    with ShapeRecorder() as rec:
        mixer(x, pad).square().sum().backward()
    assert len(rec.shapes) > 10  # the recorder saw the forward and backward
    assert not time_by_time(rec.shapes, T), time_by_time(rec.shapes, T)[:3]
    sb = SBHyperMixing(D, 32, num_heads=4)  # positive control
    with ShapeRecorder() as rec:
        sb(x, x, x)
    assert time_by_time(rec.shapes, T)


# --------------------------------------------------------------------------
# SummaryMixing (Parcollet et al. 2024; the BEST-RQ study's layout)


def linear(layer, v):
    """A dense layer applied by hand to a vector (nn.Linear or a
    HeadedLinear with its blocks)."""
    if isinstance(layer, torch.nn.Linear):
        return layer.weight @ v + layer.bias
    if hasattr(layer, "linear"):
        return linear(layer.linear, v)
    return v @ torch.block_diag(*layer.weight) + layer.bias


def mlp_ref(seq, v, act):
    """Each dense layer of ``seq`` followed by ``act``, by hand."""
    for layer in list(seq)[::2]:
        v = act(linear(layer, v))
    return v


def layer_norm_ref(norm, v):
    return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + norm.eps) * norm.weight + norm.bias


@pytest.mark.parametrize("nhead", [1, 2])
@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-lite"])
def test_summarymixing_equals_the_papers_equations(mode, nhead):
    """f_t = LN(f(x_t)), s = LN(mean_valid s(x_t)), y_t = act(W [f_t; s] + b)."""
    mixer = SummaryMixing(
        D, nhead=nhead, local_proj_hid_dim=[24], local_proj_out_dim=12,
        summary_hid_dim=[20], mode=mode,
    ).eval()
    with torch.no_grad():  # non-trivial biases and norms (they start at 0 / 1)
        for name, p in mixer.named_parameters():
            if p.dim() == 1:
                p.normal_()
    x = torch.randn(2, 8, D)
    lengths = [8, 3]
    act = Swish()
    with torch.no_grad():
        out = mixer(x, pad_mask_of(lengths, 8))
        for b, n in enumerate(lengths):
            total = torch.zeros(D)
            for t in range(n):  # the mean over the n valid frames only
                total = total + mlp_ref(mixer.summary, x[b, t], act)
            s = total / n
            for t in range(n):
                if mode == "SummaryMixing":
                    f = layer_norm_ref(mixer.local_norm, mlp_ref(mixer.local, x[b, t], act))
                    s_n = layer_norm_ref(mixer.summary_norm, s)
                    expected = act(linear(mixer.combiner[0], torch.cat([f, s_n])))
                else:
                    expected = s
                torch.testing.assert_close(out[b, t], expected, atol=1e-5, rtol=1e-5)


def test_summarymixing_at_the_papers_width_has_the_authors_layout():
    """D -> 512 -> 512 (+LN), D -> 1024 -> D (+LN), Linear(512 + D -> D)."""
    with torch.device("meta"):
        sm = SummaryMixing(536)
    shapes = {k: tuple(v.shape) for k, v in sm.state_dict().items()}
    assert shapes == {
        "summary.0.linear.weight": (1024, 536), "summary.0.linear.bias": (1024,),
        "summary.2.linear.weight": (536, 1024), "summary.2.linear.bias": (536,),
        "local.0.linear.weight": (512, 536), "local.0.linear.bias": (512,),
        "local.2.linear.weight": (512, 512), "local.2.linear.bias": (512,),
        "local_norm.weight": (512,), "local_norm.bias": (512,),
        "summary_norm.weight": (536,), "summary_norm.bias": (536,),
        "combiner.0.weight": (536, 1048), "combiner.0.bias": (536,),
    }
    assert all((b == 0).all() for k, b in SummaryMixing(24, local_proj_hid_dim=[8], local_proj_out_dim=8,
               summary_hid_dim=[8]).state_dict().items() if k.endswith("bias"))


def test_summarymixing_rejects_an_unknown_mode_naming_the_valid_ones():
    with pytest.raises(ValueError) as err:
        SummaryMixing(D, mode="lite")
    assert "'SummaryMixing'" in str(err.value) and "'SummaryMixing-lite'" in str(err.value)


# --------------------------------------------------------------------------
# Fastformer (Wu et al. 2021; scores from the whole vector, as its code)


def fastformer_ref(mixer, x, n):
    """The equations of lobes/nnet/mixers/fastformer.py for one utterance of n
    valid frames, by loops over heads and frames."""
    H, dh = mixer.nhead, mixer.d_head
    q_all = [linear(mixer.query_proj, x[i]) for i in range(n)]
    k_all = [linear(mixer.key_proj, x[i]) for i in range(n)]
    v_all = q_all if mixer.value_proj is None else [linear(mixer.value_proj, x[i]) for i in range(n)]
    wq, bq = mixer.query_attn.weight, mixer.query_attn.bias
    wk, bk = mixer.key_attn.weight, mixer.key_attn.bias
    q_g = torch.zeros(D)
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        e = [math.exp(float(wq[h] @ q_all[i] + bq[h]) / math.sqrt(dh)) for i in range(n)]
        q_g[sl] = sum(e[i] / sum(e) * q_all[i][sl] for i in range(n))
    p = [q_g * k_all[i] for i in range(n)]
    k_g = torch.zeros(D)
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        e = [math.exp(float(wk[h] @ p[i] + bk[h]) / math.sqrt(dh)) for i in range(n)]
        k_g[sl] = sum(e[i] / sum(e) * p[i][sl] for i in range(n))
    return torch.stack([linear(mixer.out_proj, k_g * v_all[i]) + q_all[i] for i in range(n)])


@pytest.mark.parametrize("share_query_value", [True, False])
def test_fastformer_equals_a_loop_over_utterances_and_heads(share_query_value):
    mixer = Fastformer(D, nhead=4, share_query_value=share_query_value).eval()
    with torch.no_grad():  # larger weights than its N(0, 0.02) init, non-zero biases
        for p in mixer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 9, D)
    lengths = [9, 5]
    with torch.no_grad():
        out = mixer(x, pad_mask_of(lengths, 9))
        for b, n in enumerate(lengths):
            torch.testing.assert_close(out[b, :n], fastformer_ref(mixer, x[b], n), atol=1e-4, rtol=1e-4)


def test_fastformer_parameters_at_the_papers_width():
    with torch.device("meta"):
        ff, separate = Fastformer(616, nhead=8), Fastformer(616, 8, share_query_value=False)
    d, H = 616, 8
    n = sum(p.numel() for p in ff.parameters())
    assert n == 3 * (d * d + d) + 2 * (d * H + H)  # query, key, out; two scorers
    assert sum(p.numel() for p in separate.parameters()) - n == d * d + d


# --------------------------------------------------------------------------
# HyperMixing (SpeechBrain's module, without its T x T output)


def test_sinusoidal_positions_equal_speechbrains_table_without_its_length_limit():
    sb = PositionalEncoding(D, max_len=3000)(torch.zeros(1, 2999, D))
    torch.testing.assert_close(sinusoidal_positions(2999, D), sb, atol=0, rtol=0)
    torch.testing.assert_close(sinusoidal_positions(5000, D)[:, :2999], sb, atol=0, rtol=0)
    odd = sinusoidal_positions(4, 5)
    assert odd.shape == (1, 4, 5) and (odd[0, 0] == torch.tensor([0.0, 1, 0, 1, 0])).all()


@pytest.mark.parametrize("tied,fix_tm_hidden_size", [(False, False), (True, False), (False, True)])
def test_hypermixing_equals_speechbrains_hypermixing_with_the_same_weights(tied, fix_tm_hidden_size):
    ours = HyperMixing(D, nhead=4, hypernet_size=32, tied=tied, fix_tm_hidden_size=fix_tm_hidden_size).eval()
    with torch.no_grad():  # a non-trivial output LayerNorm
        ours.layer_norm.weight.normal_()
        ours.layer_norm.bias.normal_()
    ref = SBHyperMixing(D, 32, tied=tied, num_heads=4, fix_tm_hidden_size=fix_tm_hidden_size).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert missing == ["positional_encoding.pe"] and unexpected == []
    x = torch.randn(3, 12, D)
    pad = pad_mask_of([12, 7, 1], 12)
    with torch.no_grad():
        sb_out, sb_weights = ref(x, x, x, key_padding_mask=pad)
        out = ours(x, pad)
    assert sb_weights.shape == (3, 12, 12)  # the quadratic tensor ours drops
    torch.testing.assert_close(out, sb_out, atol=1e-5, rtol=1e-5)  # padded rows too


# --------------------------------------------------------------------------
# Mamba (Gu and Dao 2023) in mamba_ssm's Block, both directions


@pytest.mark.parametrize("length,chunk", [(1, 4), (13, 4), (50, 8), (70, 64)])
def test_mamba_scan_equals_the_sequential_reference(length, chunk):
    g = torch.Generator().manual_seed(length)
    u = torch.randn(2, 6, length, generator=g)
    delta = F.softplus(torch.randn(2, 6, length, generator=g) - 2)
    A = -torch.exp(torch.log(torch.arange(1, 9.0)).repeat(6, 1))
    B, C = torch.randn(2, 8, length, generator=g), torch.randn(2, 8, length, generator=g)
    Dskip = torch.randn(6, generator=g)
    torch.testing.assert_close(
        selective_scan(u, delta, A, B, C, Dskip, chunk_size=chunk),
        selective_scan_ref(u, delta, A, B, C, Dskip),
        atol=1e-5, rtol=1e-5,
    )


def test_mamba_block_with_vectorised_scan_equals_the_reference_scan(monkeypatch):
    block = MambaBlock(D, d_state=4, chunk_size=8).eval()
    x = torch.randn(2, 21, D)
    fast = block(x)
    monkeypatch.setattr(mamba, "selective_scan", lambda u, d, A, B, C, Dk, c: selective_scan_ref(u, d, A, B, C, Dk))
    torch.testing.assert_close(block(x), fast, atol=1e-5, rtol=1e-5)


needs_cpu_kernel = pytest.mark.skipif(
    not cpu_scan.cpu_scan_available(),
    reason="Mamba's compiled CPU scan cannot be built here (no compiler/ninja)",
)


@needs_cpu_kernel
@pytest.mark.parametrize(
    "batch,length,d_inner,n_state", [(1, 1, 16, 16), (2, 37, 20, 3), (3, 130, 48, 16), (1, 300, 33, 5)]
)
def test_mamba_cpu_kernel_equals_the_sequential_reference(batch, length, d_inner, n_state):
    """Channel counts off the kernel's 16-wide blocks, one frame, many
    frames, batches: the compiled scan gives the reference's numbers."""
    g = torch.Generator().manual_seed(length)
    u = torch.randn(batch, d_inner, length, generator=g)
    delta = F.softplus(torch.randn(batch, d_inner, length, generator=g) - 1)
    A = -torch.exp(torch.randn(d_inner, n_state, generator=g))
    B = torch.randn(batch, n_state, length, generator=g)
    C = torch.randn(batch, n_state, length, generator=g)
    Dskip = torch.randn(d_inner, generator=g)
    ref = selective_scan_ref(u, delta, A, B, C, Dskip)
    out = cpu_scan.scan_forward(u.mT, delta.mT, A, B.mT, C.mT, Dskip).mT
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_cpu_kernel
def test_mamba_cpu_kernel_handles_underflowing_decays_and_bf16():
    """Decays below float32's range (exp(-200)) give 0, as expf's
    subnormals do to the last digit that matters; bf16 in, bf16 out."""
    u, delta = torch.ones(1, 4, 3), torch.full((1, 4, 3), 50.0)
    A, B, C = -torch.full((4, 2), 4.0), torch.ones(1, 2, 3), torch.ones(1, 2, 3)
    ref = selective_scan_ref(u, delta, A, B, C)
    out = cpu_scan.scan_forward(u.mT, delta.mT, A, B.mT, C.mT, torch.zeros(4)).mT
    torch.testing.assert_close(out, ref)
    out = cpu_scan.scan_forward(u.mT.bfloat16(), delta.mT, A, B.mT, C.mT, torch.zeros(4))
    assert out.dtype == torch.bfloat16


@needs_cpu_kernel
@pytest.mark.parametrize("batch,length,d_inner,n_state", [(2, 37, 20, 3), (1, 130, 48, 16)])
def test_mamba_cpu_kernel_gradients_equal_the_reference(batch, length, d_inner, n_state):
    """The kernel's backward (states recomputed per 64-frame chunk, here
    over 1 and 3 chunks, a partial channel block) gives the sequential
    reference's gradients for every input."""
    g = torch.Generator().manual_seed(length)
    inputs = [
        torch.randn(batch, length, d_inner, generator=g),
        F.softplus(torch.randn(batch, length, d_inner, generator=g) - 1),
        -torch.exp(torch.randn(d_inner, n_state, generator=g)),
        torch.randn(batch, length, n_state, generator=g),
        torch.randn(batch, length, n_state, generator=g),
        torch.randn(d_inner, generator=g),
    ]
    inputs = [t.requires_grad_() for t in inputs]
    u, delta, A, B, C, Dskip = inputs
    grad_out = torch.randn(batch, length, d_inner, generator=g)
    out = cpu_scan.scan_forward(*inputs)
    got = torch.autograd.grad(out, inputs, grad_out)
    ref = selective_scan_ref(u.mT, delta.mT, A, B.mT, C.mT, Dskip).mT
    expected = torch.autograd.grad(ref, inputs, grad_out)
    for name, a, b in zip(["u", "delta", "A", "B", "C", "D"], got, expected):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4, msg=name)


@needs_cpu_kernel
@pytest.mark.parametrize("d_model", [D, 10])
def test_bimamba_trains_and_infers_through_the_cpu_kernel(monkeypatch, d_model):
    """Inference and training both go through the fused CPU block (both
    directions, the backward one reversed within each utterance by the
    kernels), with the PyTorch scan's outputs and gradients (padding
    isolation included; a width off the multiples of 8 takes the
    zero-padded products)."""
    mixer = BiMamba(d_model, d_state=4)
    with torch.no_grad():  # larger than the init: the mixing is not negligible
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 19, d_model, requires_grad=True)
    pad = pad_mask_of([19, 12, 1], 19)
    calls = []
    fused = cpu_scan.mamba_direction
    monkeypatch.setattr(cpu_scan, "mamba_direction", lambda *a: calls.append(a[-1]) or fused(*a))
    fast = mixer(x, pad)
    assert calls == [False, True]  # both directions, the second reversed
    fast_grads = torch.autograd.grad((fast - x).square().sum(), [x, *mixer.parameters()])
    with torch.no_grad():
        assert torch.equal(mixer(x, pad), fast)
    for block in (mixer.fwd, mixer.bwd):
        block.backend = "torch"
    slow = mixer(x, pad)
    assert len(calls) == 4  # the PyTorch scan: no further fused call
    slow_grads = torch.autograd.grad((slow - x).square().sum(), [x, *mixer.parameters()])
    torch.testing.assert_close(fast - x, slow - x, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4)


def plain_mamba_direction(block, h, lengths, reverse):
    """One direction of a Mamba block in plain PyTorch, the reference of
    ``cpu_scan.mamba_direction``: reverse each utterance within its length
    (``reverse``), run the block's layers one by one (``nn.Conv1d``, the
    sequential scan), reverse back."""
    if reverse:
        h = mamba.reverse_within_lengths(h, lengths)
    out = original_mamba_block_forward(block, h)
    return mamba.reverse_within_lengths(out, lengths) if reverse else out


@needs_cpu_kernel
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("d_model,length", [(10, 1), (10, 70), (24, 37)])
def test_fused_mamba_direction_equals_the_plain_block(reverse, d_model, length):
    """The fused direction (compiled convolution + SiLU, scan with softplus
    and gate, zero-padded products) gives the plain block's outputs and
    gradients, on every frame (padding included), in both orders, over
    more than one 64-frame chunk of the backward, with channel counts off
    the kernels' 16-wide blocks."""
    block = MambaBlock(d_model, d_state=5)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    lengths = torch.tensor([length, max(1, length // 2), 1])
    h = torch.randn(3, length, d_model, requires_grad=True)
    params = [h, *block.parameters()]
    out = cpu_scan.mamba_direction(h, *block.fused_weights(), lengths, reverse)
    assert out.shape == (3, length, -(-d_model // 8) * 8) and not out[..., d_model:].any()
    out = out[..., :d_model]
    ref = plain_mamba_direction(block, h, lengths, reverse)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad((out * grad_out).sum(), params)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), params)
    for name, g, r in zip(["h", *dict(block.named_parameters())], grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5 * r.abs().max().item(), rtol=1e-4, msg=name)


def test_mamba_cpu_kernel_build_failure_falls_back_with_a_warning(monkeypatch):
    """No compiler: one warning naming the fix, the PyTorch scan runs, and
    backend='cpu_kernel' refuses with a clear error."""
    import torch.utils.cpp_extension as ext

    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(ext, "load", broken)
    cpu_scan.load_cpu_scan.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="pip install ninja"):
            assert cpu_scan.load_cpu_scan() is None
        block = MambaBlock(D, d_state=4).eval()
        with torch.no_grad():
            ref = block(torch.randn(1, 5, D))
        assert torch.isfinite(ref).all()
        with pytest.raises(ImportError, match="backend='auto' or 'torch'"):
            MambaBlock(D, d_state=4, backend="cpu_kernel")
        monkeypatch.setenv(cpu_scan.ENV_SWITCH, "0")
        cpu_scan.load_cpu_scan.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cpu_scan.load_cpu_scan() is None
    finally:
        monkeypatch.undo()
        cpu_scan.load_cpu_scan.cache_clear()


def rms_norm_ref(norm, v):
    return v / torch.sqrt(v.pow(2).mean() + norm.eps) * norm.weight


@pytest.mark.parametrize("padding_isolation", [True, False])
def test_bimamba_is_a_prenorm_residual_block_of_both_directions(padding_isolation):
    """y = x + Mamba_f(n) + rev(Mamba_b(rev(n))), n = RMSNorm(x) frame by frame;
    rev reverses within each utterance (isolation) or the whole padded batch
    (the authors' flip)."""
    mixer = BiMamba(D, d_state=4, padding_isolation=padding_isolation).eval()
    with torch.no_grad():
        mixer.norm.weight.normal_()
    x = torch.randn(2, 9, D)
    lengths = [9, 6]
    pad = pad_mask_of(lengths, 9)
    with torch.no_grad():
        out = mixer(x, pad)
        for b, n in enumerate(lengths):
            T = n if padding_isolation else 9
            h = torch.stack([rms_norm_ref(mixer.norm, x[b, t]) for t in range(T)])[None]
            expected = x[b, :T] + mixer.fwd(h)[0] + mixer.bwd(h.flip(1)).flip(1)[0]
            torch.testing.assert_close(out[b, :n], expected[:n], atol=1e-5, rtol=1e-5)
    if not padding_isolation:  # the authors' flip: padding reaches real frames
        x2 = x.clone()
        x2[1, 6:] = 100.0
        with torch.no_grad():
            assert (mixer(x2, pad)[1, :6] - out[1, :6]).abs().max() > 1e-3


def test_mamba_state_dict_is_mamba_ssm_compatible_and_cuda_backend_is_explained():
    keys = {
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
        "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
    }
    assert set(MambaBlock(D).state_dict()) == keys
    assert set(BiMamba(D).state_dict()) == {"norm.weight"} | {f"{d}.{k}" for d in ("fwd", "bwd") for k in keys}
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install mamba-ssm"):
            MambaBlock(D, backend="cuda")


# --------------------------------------------------------------------------
# RelPosMHSA: SpeechBrain's RelPosMHAXL numbers through fused SDPA.


def speechbrain_relpos(mixer, x, pad_mask, pos):
    """SpeechBrain's own RelPosMHAXL forward on the mixer's weights."""
    out, _ = mixer.attn(x, x, x, pos_embs=pos, key_padding_mask=pad_mask)
    return out if pad_mask is None else out.masked_fill(pad_mask[..., None], 0.0)


@pytest.mark.parametrize(
    "T,query_chunk,padded",
    [(1, 256, False), (7, 3, True), (40, 256, True), (41, 8, False), (33, 1, True)],
)
def test_relpos_mhsa_equals_speechbrains_module_forward_and_backward(T, query_chunk, padded):
    from lobes.nnet.mixers.mhsa import RelPosMHSA

    mixer = RelPosMHSA(32, nhead=4, query_chunk=query_chunk).train()  # dropout 0
    x = torch.randn(3, T, 32, requires_grad=True)
    pad = None
    if padded:
        pad = torch.arange(T)[None, :] >= torch.tensor([T, max(1, T // 2), 1])[:, None]
    pos = mixer.make_pos_emb(x)
    out = mixer(x, pad, pos)
    if pad is not None:  # padded frames' outputs are the layer's to zero
        out = out.masked_fill(pad[..., None], 0.0)
    ref = speechbrain_relpos(mixer, x, pad, pos)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out)
    params = [x, *mixer.parameters()]
    grads = torch.autograd.grad((out * grad_out).sum(), params)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), params)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_relpos_mhsa_keeps_speechbrains_state_dict():
    """Checkpoints of the RelPosMHAXL wrapper load unchanged."""
    from speechbrain.nnet.attention import RelPosMHAXL

    from lobes.nnet.mixers.mhsa import RelPosMHSA

    mixer = RelPosMHSA(32, nhead=4)
    sb = RelPosMHAXL(32, 4)
    assert set(mixer.state_dict()) == {f"attn.{k}" for k in sb.state_dict()} | {
        "pos_enc.inv_freq"
    }
    assert not list(mixer.pos_enc.parameters())
    mixer.attn.load_state_dict(sb.state_dict())
    x = torch.randn(2, 9, 32)
    pos = mixer.make_pos_emb(x)
    torch.testing.assert_close(
        mixer.eval()(x, None, pos), sb(x, x, x, pos_embs=pos)[0], atol=1e-5, rtol=1e-5
    )


def test_rel_shift_window_equals_speechbrains_rel_shift():
    from speechbrain.nnet.attention import RelPosMHAXL

    from lobes.nnet.mixers.mhsa import rel_shift_window

    T = 6
    scores = torch.randn(2, 3, T, 2 * T - 1)
    expected = RelPosMHAXL(8, 2).rel_shift(scores)
    assert torch.equal(rel_shift_window(scores, T, T), expected)
    # Queries 2..4 need only the T + 3 - 1 positions T-5 .. 2T-4.
    block = scores[..., 2:5, T - 2 - 3 : 2 * T - 1 - 2].contiguous()
    assert torch.equal(rel_shift_window(block, 3, T), expected[..., 2:5, :])


def test_relpos_mhsa_dropout_acts_on_the_attention_weights():
    """Training: outputs vary but average (over many draws of the dropout
    mask) to the eval output, as dropout on the softmax weights does."""
    from lobes.nnet.mixers.mhsa import RelPosMHSA

    mixer = RelPosMHSA(16, nhead=2, dropout=0.5)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        expected = mixer.eval()(x)[0]
        draws = mixer.train()(x.expand(20000, 5, 16))
    assert not torch.allclose(draws[0], expected, atol=1e-3)
    torch.testing.assert_close(draws.mean(0), expected, atol=0.02, rtol=0.0)


def test_relpos_mhsa_runs_under_bf16_autocast():
    from lobes.nnet.mixers.mhsa import RelPosMHSA

    mixer = RelPosMHSA(32, nhead=4).eval()
    x = torch.randn(2, 30, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x, None, mixer.make_pos_emb(x))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mixer(x), atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------
# Mamba: the chunked CPU scan and the time-major block.


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_mamba_scan_gradients_equal_the_reference(chunk):
    g = torch.Generator().manual_seed(chunk)
    u = torch.randn(2, 6, 23, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(2, 6, 23, generator=g) - 2)
    A = -torch.exp(torch.rand(6, 4, generator=g))
    B, C = torch.randn(2, 4, 23, generator=g), torch.randn(2, 4, 23, generator=g)
    Dskip = torch.randn(6, generator=g)
    inputs = [t.requires_grad_() for t in (u, delta, A, B, C, Dskip)]
    out = selective_scan(*inputs, chunk_size=chunk)
    ref = selective_scan_ref(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad((out * grad_out).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), inputs)
    for g_, r in zip(grads, ref_grads):
        torch.testing.assert_close(g_, r, atol=1e-4, rtol=1e-4)


def test_mamba_scan_keeps_the_input_dtype_and_accepts_time_major_views():
    u = torch.randn(2, 9, 6).transpose(1, 2)  # (b, D_in, L) view of (b, L, D_in)
    delta = torch.rand(2, 9, 6).transpose(1, 2)
    A, B, C = -torch.rand(6, 3), torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    ref = selective_scan_ref(u, delta, A, B, C)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, chunk_size=4), ref)
    out = selective_scan(u.bfloat16(), delta, A, B, C)
    assert out.dtype == torch.bfloat16


def original_mamba_block_forward(block, x):
    """MambaBlock's forward before the time-major rewrite: channels-first
    ``nn.Conv1d`` and the sequential reference scan."""
    length = x.shape[1]
    u, z = block.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    u = torch.nn.functional.silu(block.conv1d(u)[..., :length])
    dt, B, C = torch.split(
        block.x_proj(u.transpose(1, 2)), [block.dt_rank, block.d_state, block.d_state], dim=-1
    )
    delta = torch.nn.functional.softplus(block.dt_proj(dt)).transpose(1, 2)
    A = -torch.exp(block.A_log.float())
    y = selective_scan_ref(u, delta, A, B.transpose(1, 2), C.transpose(1, 2), block.D)
    y = y * torch.nn.functional.silu(z)
    return block.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("length", [1, 3, 37])
def test_mamba_block_equals_its_original_channels_first_forward(length):
    block = MambaBlock(D, d_state=4, chunk_size=8)
    x = torch.randn(2, length, D, requires_grad=True)
    out = block(x)
    ref = original_mamba_block_forward(block, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *block.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
