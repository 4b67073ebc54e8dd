"""The linear-time token mixers: SummaryMixing (and -lite), Fastformer,
HyperMixing.

For each: shapes and finite gradients, padding invariance (garbage in the
padding changes nothing on real frames, padded outputs are exactly zero),
equality with an explicit reference written from the paper's equations (or,
for HyperMixing, with SpeechBrain's module), and no T x T tensor anywhere.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from speechbrain.nnet.hypermixing import HyperMixing as SBHyperMixing
from torch.utils._python_dispatch import TorchDispatchMode

from lobes.mixers.fastformer import Fastformer
from lobes.mixers.hypermixing import HyperMixing
from lobes.mixers.common import sinusoidal_positions
from lobes.mixers.summarymixing import SummaryMixing

D = 16

FACTORIES = {
    "summarymixing": lambda d=D, h=4: SummaryMixing(
        d, nhead=1, dropout=0.1, local_proj_hid_dim=[24], summary_hid_dim=[20]
    ),
    "summarymixing_2heads": lambda d=D, h=4: SummaryMixing(
        d, nhead=2, dropout=0.1, local_proj_hid_dim=[24, 12], summary_hid_dim=[20]
    ),
    "summarymixing_lite": lambda d=D, h=4: SummaryMixing(
        d, dropout=0.1, summary_hid_dim=[20], mode="SummaryMixing-lite"
    ),
    "fastformer": lambda d=D, h=4: Fastformer(d, nhead=h, dropout=0.1),
    "fastformer_separate_value": lambda d=D, h=4: Fastformer(
        d, nhead=h, dropout=0.1, share_query_value=False
    ),
    "hypermixing": lambda d=D, h=4: HyperMixing(
        d, nhead=h, dropout=0.1, hypernet_size=2 * d
    ),
}
NAMES = sorted(FACTORIES)


def pad_mask_of(lengths, T):
    """(B, T) bool, True on padded frames."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_finite_gradients_for_every_parameter(name):
    mixer = FACTORIES[name]().train()
    x = torch.randn(3, 13, D, requires_grad=True)
    pad = pad_mask_of([13, 9, 4], 13)
    out = mixer(x, pad)
    assert out.shape == (3, 13, D)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(x.grad).all()
    assert x.grad[pad].abs().max() == 0  # padded inputs cannot matter


@pytest.mark.parametrize("name", NAMES)
def test_padding_garbage_never_changes_real_frames(name):
    mixer = FACTORIES[name]().eval()
    alone = torch.randn(1, 11, D)
    batch = torch.randn(3, 19, D) * 1e3  # large garbage in the padding
    batch[0, :11] = alone[0]
    pad = pad_mask_of([11, 19, 15], 19)
    with torch.no_grad():
        ref = mixer(alone)
        out = mixer(batch, pad)
        no_mask = mixer(batch[1:2])
    torch.testing.assert_close(out[0, :11], ref[0], atol=1e-5, rtol=1e-5)
    assert (out[0, 11:] == 0).all() and (out[2, 15:] == 0).all()
    torch.testing.assert_close(out[1], no_mask[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_an_utterance_made_only_of_padding_gives_zeros_not_nan(name):
    mixer = FACTORIES[name]().train()
    x = torch.randn(2, 6, D, requires_grad=True)
    out = mixer(x, pad_mask_of([6, 0], 6))
    assert (out[1] == 0).all() and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_runs_under_bf16_autocast(name):
    mixer = FACTORIES[name]().eval()
    x = torch.randn(2, 30, D)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x, pad_mask_of([30, 17], 30))
    assert out.shape == (2, 30, D) and torch.isfinite(out).all()
    ref = mixer(x, pad_mask_of([30, 17], 30)).detach()
    assert (out.float() - ref).abs().max() < 0.25  # bf16 has ~3 digits


# --------------------------------------------------------------------------
# References written from the papers' equations, frame by frame.


def linear(layer, v):
    """nn.Linear applied by hand to a vector."""
    return layer.weight @ v + layer.bias


def mlp_ref(seq, v):
    """A Sequential of (Linear, GELU, Dropout) blocks, applied by hand."""
    for lin in [m for m in seq if isinstance(m, torch.nn.Linear)]:
        v = F.gelu(linear(lin, v))
    return v


@pytest.mark.parametrize("nhead", [1, 2])
@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-lite"])
def test_summarymixing_equals_a_hand_computed_reference(mode, nhead):
    mixer = SummaryMixing(
        D, nhead=nhead, local_proj_hid_dim=[24], summary_hid_dim=[20], mode=mode
    ).eval()
    x = torch.randn(2, 8, D)
    lengths = [8, 3]
    with torch.no_grad():
        out = mixer(x, pad_mask_of(lengths, 8))
        for b, n in enumerate(lengths):
            # s: mean over the n valid frames only, by an explicit loop.
            total = torch.zeros(D)
            for t in range(n):
                total = total + mlp_ref(mixer.summary, x[b, t])
            s = total / n
            for t in range(n):
                if mode == "SummaryMixing":
                    hidden = mlp_ref(mixer.local, x[b, t])
                    # last local layer: block-diagonal, one block per head
                    W = torch.block_diag(*mixer.local_heads)  # (24, D)
                    f = F.gelu(hidden @ W + mixer.local_bias)
                    expected = F.gelu(linear(mixer.combiner[0], torch.cat([f, s])))
                else:
                    expected = F.gelu(linear(mixer.combiner[0], s))
                torch.testing.assert_close(out[b, t], expected, atol=1e-5, rtol=1e-5)
            assert (out[b, n:] == 0).all()


def test_summarymixing_rejects_an_unknown_mode_naming_the_valid_ones():
    with pytest.raises(ValueError) as err:
        SummaryMixing(D, mode="lite")
    assert "'SummaryMixing'" in str(err.value)
    assert "'SummaryMixing-lite'" in str(err.value)


def fastformer_ref(mixer, x, n):
    """Wu et al. (2021), Eqs. for one utterance of n valid frames, by loops."""
    H, dh = mixer.nhead, mixer.d_head
    Wqk, bqk = mixer.qk.weight, mixer.qk.bias
    q_all = [x[i] @ Wqk[:D].t() + bqk[:D] for i in range(n)]
    k_all = [x[i] @ Wqk[D:].t() + bqk[D:] for i in range(n)]
    v_all = q_all if mixer.v_proj is None else [linear(mixer.v_proj, x[i]) for i in range(n)]
    u_all = [torch.zeros(D) for _ in range(n)]
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        q = [qi[sl] for qi in q_all]
        k = [ki[sl] for ki in k_all]
        v = [vi[sl] for vi in v_all]
        e = [math.exp(float(mixer.w_q[h] @ qi) / math.sqrt(dh)) for qi in q]
        alpha = [ei / sum(e) for ei in e]
        q_g = sum(alpha[i] * q[i] for i in range(n))
        p = [q_g * k[i] for i in range(n)]
        e = [math.exp(float(mixer.w_k[h] @ pi) / math.sqrt(dh)) for pi in p]
        beta = [ei / sum(e) for ei in e]
        k_g = sum(beta[i] * p[i] for i in range(n))
        for i in range(n):
            u_all[i][sl] = k_g * v[i]
    return torch.stack([linear(mixer.out_proj, u_all[i]) + q_all[i] for i in range(n)])


@pytest.mark.parametrize("share_query_value", [True, False])
def test_fastformer_equals_a_loop_over_utterances_and_heads(share_query_value):
    mixer = Fastformer(D, nhead=4, share_query_value=share_query_value).eval()
    x = torch.randn(2, 9, D)
    lengths = [9, 5]
    with torch.no_grad():
        out = mixer(x, pad_mask_of(lengths, 9))
        for b, n in enumerate(lengths):
            ref = fastformer_ref(mixer, x[b], n)
            torch.testing.assert_close(out[b, :n], ref, atol=1e-5, rtol=1e-5)


def test_fastformer_shares_query_and_value_by_default():
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    shared, separate = Fastformer(D, 4), Fastformer(D, 4, share_query_value=False)
    assert n_params(separate) - n_params(shared) == D * D + D


def test_sinusoidal_positions_equal_speechbrains_table_without_its_length_limit():
    sb = PositionalEncoding(D, max_len=3000)(torch.zeros(1, 2999, D))
    ours = sinusoidal_positions(2999, D)
    torch.testing.assert_close(ours, sb, atol=0, rtol=0)
    long = sinusoidal_positions(5000, D)  # beyond SpeechBrain's default table
    torch.testing.assert_close(long[:, :2999], sb, atol=0, rtol=0)
    odd = sinusoidal_positions(4, 5)
    assert odd.shape == (1, 4, 5) and (odd[0, 0] == torch.tensor([0.0, 1, 0, 1, 0])).all()


@pytest.mark.parametrize(
    "tied,fix_tm_hidden_size", [(False, False), (True, False), (False, True)]
)
def test_hypermixing_equals_speechbrains_hypermixing_with_the_same_weights(
    tied, fix_tm_hidden_size
):
    ours = HyperMixing(
        D, nhead=4, hypernet_size=32, tied=tied, fix_tm_hidden_size=fix_tm_hidden_size
    ).eval()
    with torch.no_grad():  # a non-trivial output LayerNorm
        ours.layer_norm.weight.normal_()
        ours.layer_norm.bias.normal_()
    ref = SBHyperMixing(
        D, 32, tied=tied, num_heads=4, fix_tm_hidden_size=fix_tm_hidden_size
    ).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert missing == ["positional_encoding.pe"] and unexpected == []
    x = torch.randn(3, 12, D)
    lengths = [12, 7, 1]
    pad = pad_mask_of(lengths, 12)
    with torch.no_grad():
        sb_out, sb_weights = ref(x, x, x, key_padding_mask=pad)
        out = ours(x, pad)
    assert sb_weights.shape == (3, 12, 12)  # the quadratic tensor ours drops
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, :n], sb_out[b, :n], atol=1e-5, rtol=1e-5)
        assert (out[b, n:] == 0).all()


# --------------------------------------------------------------------------
# Linear memory: no T x T tensor, ever.

LONG_T = 20_000  # a (1, T, T) float32 tensor would take 1.6 GB
MAX_ALLOCATION = 100e6  # bytes


def biggest_allocation(module, x, *args):
    """Largest memory any single op allocates in ``module(x, *args)``."""
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        module(x, *args)
    return max(e.cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("name", NAMES)
def test_no_allocation_above_100_mb_at_20000_frames(name):
    mixer = FACTORIES[name](8, 2).eval()
    x = torch.randn(1, LONG_T, 8)
    biggest = biggest_allocation(mixer, x, torch.zeros(1, LONG_T, dtype=torch.bool))
    assert biggest < MAX_ALLOCATION, f"{name}: one allocation of {biggest / 1e6:.0f} MB"


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


@pytest.mark.parametrize("name", NAMES)
def test_no_op_produces_a_time_by_time_tensor_forward_or_backward(name):
    T = 97  # prime, distinct from every other size here
    mixer = FACTORIES[name]().train()
    x = torch.randn(2, T, D, requires_grad=True)
    pad = pad_mask_of([T, 60], T)
    with ShapeRecorder() as rec:
        mixer(x, pad).square().sum().backward()
    assert len(rec.shapes) > 10  # the recorder saw the forward and backward
    assert not time_by_time(rec.shapes, T), time_by_time(rec.shapes, T)[:3]
    # positive control: SpeechBrain's HyperMixing does produce one
    sb = SBHyperMixing(D, 32, num_heads=4)
    with ShapeRecorder() as rec:
        sb(x, x, x)
    assert time_by_time(rec.shapes, T)


# --------------------------------------------------------------------------
# Parameter counts at the paper's widths, from the modules' equations.


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_the_papers_widths():
    with torch.device("meta"):
        sm = SummaryMixing(536, nhead=1, local_proj_hid_dim=[1024], summary_hid_dim=[1024])
        ff = Fastformer(616, nhead=8)
        hm = HyperMixing(672, nhead=8, hypernet_size=2048)
    d, k = 536, 1024
    branch = d * k + k + k * d + d  # D -> 1024 -> D
    assert n_params(sm) == 2 * branch + (2 * d * d + d)  # + combiner 2D -> D
    d = 616
    assert n_params(ff) == 2 * d * d + 2 * d + d * d + d + 2 * d  # qk, out, w_q/w_k
    d, H, k = 672, 8, 2048 // 8
    per_head_mlp = (d // H) ** 2 + d // H + k * (d // H) + k  # D/H -> D/H -> k
    assert n_params(hm) == 2 * H * per_head_mlp + 2 * d  # W1, W2 generators + LN
