"""Every token mixer: reference equality, padding invariance, linear memory."""

import math

import pytest
import torch
from speechbrain.nnet.hypermixing import HyperMixing as SBHyperMixing

from lobes.mixers import MIXERS, build_mixer
from lobes.mixers.fastformer import Fastformer
from lobes.mixers.hypermixing import HyperMixing
from lobes.mixers.mamba import BiMamba, MambaBlock, selective_scan, selective_scan_ref
from lobes.mixers.summarymixing import SummaryMixing

D = 16
SMALL_KWARGS = {
    "summarymixing": {"local_proj_hid_dim": [24], "summary_hid_dim": [24]},
    "summarymixing_lite": {"summary_hid_dim": [24]},
    "hypermixing": {"hypernet_size": 32},
    "mamba": {"d_state": 4},
}


def make(name):
    return build_mixer(name, D, 4, **SMALL_KWARGS.get(name, {})).eval()


def call(mixer, x, pad_mask=None):
    pos = mixer.make_pos_emb(x) if hasattr(mixer, "make_pos_emb") else None
    return mixer(x, pad_mask, pos)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_padding_never_changes_real_frames(name):
    mixer = make(name)
    alone = torch.randn(1, 11, D)
    batch = torch.randn(2, 19, D) * 100  # garbage in the padding
    batch[0, :11] = alone[0]
    pad = torch.arange(19)[None, :] >= torch.tensor([[11], [19]])
    with torch.no_grad():
        ref = call(mixer, alone)
        out = call(mixer, batch, pad)
    torch.testing.assert_close(out[0, :11], ref[0], atol=1e-5, rtol=1e-4)
    assert out[0, 11:].abs().max() == 0


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_forward_backward_gives_finite_gradients(name):
    mixer = make(name).train()
    x = torch.randn(3, 13, D, requires_grad=True)
    pad = torch.arange(13)[None, :] >= torch.tensor([[13], [9], [4]])
    call(mixer, x, pad).sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["hypermixing", "fastformer", "summarymixing", "mamba"])
def test_linear_mixers_never_allocate_a_time_by_time_tensor(name):
    """At T=6000 a (T, T) float matrix is 144 MB: no allocation may reach it."""
    mixer = make(name)
    x = torch.randn(1, 6000, D)
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        call(mixer, x)
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert biggest < 6000 * 6000 * 4 / 4, f"{name}: an allocation of {biggest / 1e6:.0f} MB"


def test_hypermixing_equals_speechbrain_hypermixing_without_its_quadratic_output():
    ours = HyperMixing(D, nhead=4, hypernet_size=32).eval()
    ref = SBHyperMixing(D, 32, num_heads=4).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("positional" in k for k in missing)
    x = torch.randn(2, 12, D)
    pad = torch.arange(12)[None, :] >= torch.tensor([[12], [7]])
    out, weights = ref(x, x, x, key_padding_mask=pad)
    assert weights.shape == (2, 12, 12)  # what SpeechBrain allocates
    ours_out = ours(x, pad)
    torch.testing.assert_close(ours_out[0], out[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_out[1, :7], out[1, :7], atol=1e-5, rtol=1e-4)


def test_fastformer_equals_the_papers_equations():
    mixer = Fastformer(D, nhead=4).eval()
    x = torch.randn(2, 9, D)
    lengths = [9, 5]
    pad = torch.arange(9)[None, :] >= torch.tensor(lengths)[:, None]
    out = mixer(x, pad)
    H, dh = 4, D // 4
    Wqk, bqk = mixer.qk.weight, mixer.qk.bias
    for b, n in enumerate(lengths):
        rows = []
        for i in range(n):
            row = []
            for h in range(H):
                q = [x[b, j] @ Wqk[h * dh:(h + 1) * dh].t() + bqk[h * dh:(h + 1) * dh] for j in range(n)]
                k = [x[b, j] @ Wqk[D + h * dh:D + (h + 1) * dh].t() + bqk[D + h * dh:D + (h + 1) * dh] for j in range(n)]
                a = torch.softmax(torch.stack([mixer.w_q[h] @ qj for qj in q]) / math.sqrt(dh), 0)
                qg = sum(a[j] * q[j] for j in range(n))
                p = [qg * kj for kj in k]
                be = torch.softmax(torch.stack([mixer.w_k[h] @ pj for pj in p]) / math.sqrt(dh), 0)
                kg = sum(be[j] * p[j] for j in range(n))
                row.append(kg * q[i])
            u = torch.cat(row)
            q_i = x[b, i] @ Wqk[:D].t() + bqk[:D]
            rows.append(mixer.out_proj(u) + q_i)
        torch.testing.assert_close(out[b, :n], torch.stack(rows), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-lite"])
def test_summarymixing_equals_the_papers_equations(mode):
    mixer = SummaryMixing(D, local_proj_hid_dim=[24], summary_hid_dim=[24], mode=mode).eval()
    x = torch.randn(2, 8, D)
    lengths = [8, 3]
    pad = torch.arange(8)[None, :] >= torch.tensor(lengths)[:, None]
    out = mixer(x, pad)
    gelu = torch.nn.functional.gelu
    for b, n in enumerate(lengths):
        s = torch.stack([mixer.summary(x[b, t]) for t in range(n)]).mean(0)
        for t in range(n):
            if mode == "SummaryMixing":
                hid = mixer.local(x[b, t])
                f = gelu(hid @ mixer.local_heads[0] + mixer.local_bias)
                expected = mixer.combiner(torch.cat([f, s]))
            else:
                expected = mixer.combiner(s)
            torch.testing.assert_close(out[b, t], expected, atol=1e-5, rtol=1e-4)


def test_summarymixing_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="SummaryMixing-lite"):
        SummaryMixing(D, mode="lite")


@pytest.mark.parametrize("length,chunk", [(1, 4), (13, 4), (50, 8), (70, 64)])
def test_mamba_scan_equals_the_sequential_reference(length, chunk):
    g = torch.Generator().manual_seed(length)
    u = torch.randn(2, 6, length, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(2, 6, length, generator=g) - 2)
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
    import lobes.mixers.mamba as mamba

    monkeypatch.setattr(mamba, "selective_scan", lambda u, d, A, B, C, Dk, c: selective_scan_ref(u, d, A, B, C, Dk))
    torch.testing.assert_close(block(x), fast, atol=1e-5, rtol=1e-5)


def test_mamba_state_dict_is_mamba_ssm_compatible_and_cuda_backend_is_explained():
    keys = set(MambaBlock(D).state_dict())
    assert keys == {
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
        "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
    }
    assert set(BiMamba(D).state_dict()) == {f"{d}.{k}" for d in ("fwd", "bwd") for k in keys}
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
    from lobes.mixers.mhsa import RelPosMHSA

    mixer = RelPosMHSA(32, nhead=4, query_chunk=query_chunk).train()  # dropout 0
    x = torch.randn(3, T, 32, requires_grad=True)
    pad = None
    if padded:
        pad = torch.arange(T)[None, :] >= torch.tensor([T, max(1, T // 2), 1])[:, None]
    pos = mixer.make_pos_emb(x)
    out = mixer(x, pad, pos)
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

    from lobes.mixers.mhsa import RelPosMHSA

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

    from lobes.mixers.mhsa import rel_shift_window

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
    from lobes.mixers.mhsa import RelPosMHSA

    mixer = RelPosMHSA(16, nhead=2, dropout=0.5)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        expected = mixer.eval()(x)[0]
        draws = mixer.train()(x.expand(20000, 5, 16))
    assert not torch.allclose(draws[0], expected, atol=1e-3)
    torch.testing.assert_close(draws.mean(0), expected, atol=0.02, rtol=0.0)


def test_relpos_mhsa_runs_under_bf16_autocast():
    from lobes.mixers.mhsa import RelPosMHSA

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
