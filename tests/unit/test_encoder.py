"""Conformer encoder: every mixer plugs in, padding never leaks (or leaks
exactly as SpeechBrain's when asked), SpeechBrain's initialisation, the
encoder definitions and their checks."""

import pytest
import torch
from conftest import ALL_MIXERS
from speechbrain.dataio.dataio import length_to_mask

from lobes.config import encoder_config, encoder_from_definition
from lobes.nnet.encoder import ConformerEncoder
from lobes.nnet.frontend import ConvFrontEnd
from lobes.nnet.mixers import MIXERS

SMALL = dict(num_layers=2, d_model=32, nhead=4, d_ffn=64, kernel_size=5, dropout=0.0)


def small_encoder(mixer, **kw):
    nhead = 1 if mixer.startswith("summarymixing") else 4
    return ConformerEncoder(
        mixer, mixer_kwargs=MIXERS[mixer].small_kwargs or None, **{**SMALL, "nhead": nhead, **kw}
    ).eval()


@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_encoder_forward_backward_all_hidden_states(mixer):
    enc = small_encoder(mixer).train()
    feats = torch.randn(3, 45, 80)
    out, hidden = enc(feats, torch.tensor([1.0, 0.6, 0.3]), return_hidden=True)
    assert out.shape == (3, 12, 32)
    assert len(hidden) == enc.num_hidden_states == 3
    assert all(h.shape == out.shape for h in hidden)
    assert torch.equal(hidden[-1], out)
    out.pow(2).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_encoder_padding_invariance(mixer):
    """An utterance padded inside a batch gives the same outputs as alone."""
    enc = small_encoder(mixer)
    short = torch.randn(1, 37, 80)
    batch = torch.randn(2, 64, 80) * 5  # garbage everywhere, then the utterance
    batch[0, :37] = short[0]
    with torch.no_grad():
        alone = enc(short)
        padded = enc(batch, torch.tensor([37 / 64, 1.0]))
    n = enc.output_lengths(torch.tensor([37])).item()
    assert alone.shape[1] == n == 10
    torch.testing.assert_close(padded[0, :n], alone[0], atol=2e-5, rtol=1e-4)
    assert padded[0, n:].abs().max() == 0


def test_frontend_matches_lengths_and_masks_between_blocks():
    fe = ConvFrontEnd(80, dropout=0.0).eval()
    x = torch.randn(1, 29, 80)
    padded = torch.cat([x, torch.randn(1, 20, 80)], dim=1)
    with torch.no_grad():
        a, la = fe(x, torch.tensor([29]))
        b, lb = fe(padded * (torch.arange(49) < 29)[None, :, None], torch.tensor([29]))
    assert la.item() == lb.item() == 8
    torch.testing.assert_close(b[:, :8], a, atol=1e-5, rtol=1e-5)


def speechbrain_frontend(fe, x):
    """SpeechBrain's own ConvBlocks (reflect padding, no masking)."""
    for block in fe.cnn.children():
        x = block(x)
    return x.flatten(2)


@pytest.mark.parametrize("channels,kernels", [((128, 32), (3, 3)), ((16, 8), (5, 3))])
def test_frontend_equals_speechbrains_blocks(channels, kernels):
    """ConvFrontEnd convolves a channels_last view instead of letting
    SpeechBrain's Conv2d transpose the activation twice: without padding
    isolation the numbers are those of SpeechBrain's blocks on the padded
    batch; with it, those of SpeechBrain's blocks on each utterance alone."""
    torch.manual_seed(0)
    x, lens = torch.randn(3, 101, 80), torch.tensor([101, 77, 40])
    leaky = ConvFrontEnd(80, channels, kernels, padding_isolation=False).eval()
    with torch.no_grad():
        out, out_lens = leaky(x, lens)
        torch.testing.assert_close(out, speechbrain_frontend(leaky, x), atol=2e-5, rtol=1e-5)
        isolated = ConvFrontEnd(80, channels, kernels).eval()
        isolated.load_state_dict(leaky.state_dict())
        out, out_lens = isolated(x * length_to_mask(lens, 101)[:, :, None], lens)
        for b, n in enumerate(lens.tolist()):
            alone = speechbrain_frontend(isolated, x[b : b + 1, :n])
            m = out_lens[b]
            assert alone.shape[1] == m
            torch.testing.assert_close(out[b : b + 1, :m], alone, atol=2e-5, rtol=1e-5)
            assert (out[b, m:] == 0).all()
    assert out.is_contiguous()


@pytest.mark.parametrize("isolation", [True, False])
@pytest.mark.parametrize("channels,kernels", [((128, 32), (3, 3)), ((16, 8), (5, 3))])
def test_frontend_in_chunks_equals_the_whole_utterance(isolation, channels, kernels, monkeypatch):
    """Inference runs each block a chunk of output frames at a time (a third
    of the peak memory at 80 s): the same numbers as the whole-utterance
    path, at chunk sizes that cut through both reflect paddings and each
    utterance's own end; training and autograd keep the whole path."""
    torch.manual_seed(0)
    x, lens = torch.randn(3, 203, 80), torch.tensor([203, 150, 61])
    x = x * length_to_mask(lens, 203)[:, :, None]
    fe = ConvFrontEnd(80, channels, kernels, padding_isolation=isolation).eval()
    chunks = []  # the chunk size of each block's call
    spy = fe._block
    monkeypatch.setattr(fe, "_block", lambda *a: chunks.append(a[3]) or spy(*a))
    with torch.no_grad():
        fe.inference_chunk = 0
        whole, whole_lens = fe(x, lens)
        assert chunks == [0, 0]  # all at once
        chunks.clear()
        for chunk in (1, 4, 13, 50):
            fe.inference_chunk = chunk
            out, out_lens = fe(x, lens)
            assert chunks == [chunk, chunk] and torch.equal(out_lens, whole_lens)
            torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-6)
            chunks.clear()
    fe.inference_chunk = 4
    fe(x, lens)  # autograd on: whole path
    fe.train()
    with torch.no_grad():
        fe(x, lens)
    assert chunks == [None] * 4


def test_unknown_mixer_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="Unknown token mixer 'attention'.*summarymixing"):
        ConformerEncoder("attention", **SMALL)
    with pytest.raises(ValueError, match="activation='tanh'; valid values: swish, gelu"):
        ConformerEncoder("mhsa", activation="tanh", **SMALL)


def test_layerdrop_only_in_training():
    enc = small_encoder("fastformer", layerdrop_prob=1.0)
    feats = torch.randn(1, 16, 80)
    enc.train()
    out, hidden = enc(feats, return_hidden=True)
    assert torch.equal(hidden[1], hidden[0])  # every layer skipped
    enc.eval()
    _, hidden = enc(feats, return_hidden=True)
    assert not torch.equal(hidden[1], hidden[0])


def test_checkpoint_of_another_mixer_or_width_is_refused():
    src = small_encoder("fastformer")
    same = small_encoder("fastformer")
    same.load_state_dict(src.state_dict())
    for other in (small_encoder("summarymixing"), small_encoder("fastformer", d_model=48)):
        with pytest.raises(ValueError, match="different encoder.*(mixer|d_model)"):
            other.load_state_dict(src.state_dict())


def test_reinitialisation_is_speechbrains_xavier_normal_after_the_front_end():
    """TransformerASR._init_params: xavier_normal_ on every >=2-D parameter
    of the Transformer part; the front-end keeps its own initialisation."""
    torch.manual_seed(1)
    xavier = encoder_from_definition("mhsa", overrides={"num_layers": 2})
    torch.manual_seed(1)
    default = encoder_from_definition("mhsa", overrides={"num_layers": 2, "init": "default"})
    for (name, p), (_, q) in zip(xavier.named_parameters(), default.named_parameters()):
        if name.startswith("frontend") or p.dim() < 2:
            assert torch.equal(p, q), name
            continue
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(p)
        std = (2.0 / (fan_in + fan_out)) ** 0.5
        assert abs(p.std().item() / std - 1) < 0.1, name
        assert abs(p.mean().item()) < 3 * std / p.numel() ** 0.5 + 1e-6, name


def test_the_encoder_definitions_hold_the_authors_settings():
    cfg = encoder_config("summarymixing")
    assert (cfg["d_model"], cfg["num_layers"], cfg["nhead"], cfg["layerdrop_prob"]) == (536, 12, 1, 0.05)
    assert cfg["mixer_kwargs"] == {"local_proj_hid_dim": [512], "local_proj_out_dim": 512, "summary_hid_dim": [1024]}
    large = encoder_config("summarymixing", "large")
    assert (large["d_model"], large["num_layers"], large["layerdrop_prob"]) == (848, 24, 0.1)
    for mixer in ("mhsa", "hypermixing", "fastformer", "summarymixing", "mamba"):
        cfg = encoder_config(mixer)
        assert cfg["activation"] == "swish" and cfg["init"] == "xavier_normal"
        assert cfg["padding_isolation"] is True and cfg["dropout"] == 0.1
    widths = {m: (encoder_config(m)["d_model"], encoder_config(m, "large")["d_model"])
              for m in ("mhsa", "hypermixing", "fastformer", "summarymixing", "mamba")}
    assert widths == {"mhsa": (576, 848), "hypermixing": (672, 1048), "fastformer": (616, 920),
                      "summarymixing": (536, 848), "mamba": (474, 678)}


def test_encoder_overrides_are_checked_key_by_key():
    cfg = encoder_config("mamba", overrides={"num_layers": 2, "mixer_kwargs": {"d_state": 8}})
    assert cfg["num_layers"] == 2 and cfg["mixer_kwargs"] == {"d_state": 8, "d_conv": 4, "expand": 2}
    with pytest.raises(ValueError, match="Unknown encoder argument.*num_layerz.*Valid arguments: mixer, num_layers"):
        encoder_config("mamba", overrides={"num_layerz": 2})
    with pytest.raises(ValueError, match="Unknown mamba mixer argument.*d_stat.*d_state"):
        encoder_config("mamba", overrides={"mixer_kwargs": {"d_stat": 8}})
    with pytest.raises(ValueError, match="set the `mixer` hyperparameter"):
        encoder_config("mamba", overrides={"mixer": "fastformer"})
    with pytest.raises(ValueError, match="summarymixing_lite.*no encoder definition.*mixers with one: fastformer"):
        encoder_config("summarymixing_lite")
    with pytest.raises(ValueError, match="size 'medium'"):
        encoder_config("mamba", "medium")


@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_an_encoder_rebuilds_from_its_own_checkpoint(mixer):
    enc = small_encoder(mixer)
    state = enc.state_dict()
    rebuilt = ConformerEncoder.from_config(state["_extra_state"])
    rebuilt.load_state_dict(state)  # strict
    assert rebuilt.config == enc.config
    x = torch.randn(1, 40, 80)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), enc(x))


@pytest.mark.slow
def test_compiled_encoder_trains_with_dynamic_shapes():
    """``torch.compile(encoder, dynamic=True)`` (SpeechBrain's ``--compile
    --compile_using_dynamic_shape_tracing``) compiles once and gives the
    eager numbers and gradients at batch shapes it has not seen; the
    front-end stays eager (Inductor fails on its symbolic strides)."""
    torch.manual_seed(0)
    enc = small_encoder("summarymixing", layerdrop_prob=0.0).train()
    compiled = torch.compile(enc, dynamic=True)
    for frames in (61, 83, 70):
        x, lens = torch.randn(3, frames, 80), torch.tensor([1.0, 0.9, 0.6])
        out = compiled(x, lens)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
        enc.zero_grad()
        ref = enc(x, lens)
        ref.square().sum().backward()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        ref_grads = [p.grad for p in enc.parameters() if p.grad is not None]
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
        enc.zero_grad()


def _assert_same_module(ours, ref, x):
    """``ours`` and ``ref`` (loaded with ``ours``'s parameters) give the
    same outputs on ``x`` and the same input and parameter gradients."""
    ref.load_state_dict(ours.state_dict())
    x = x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = ours(x), ref(x_ref)
    assert out.shape == out_ref.shape and torch.allclose(out, out_ref, atol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    out_ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, p_ref.grad, atol=1e-4), name


@pytest.mark.parametrize("width", [474, 480])
def test_feed_forward_equals_speechbrains_at_odd_widths(width):
    """The Conformer's FFN (its last product on a width rounded up to a
    multiple of 8 when it is not one: Mamba's 474) gives SpeechBrain's
    PositionalwiseFeedForward's outputs and gradients, same parameters."""
    from speechbrain.nnet.attention import PositionalwiseFeedForward
    from speechbrain.nnet.activations import Swish

    from lobes.nnet.encoder import FeedForward

    torch.manual_seed(0)
    ours = FeedForward(d_ffn=64, input_size=width, activation=Swish)
    ref = PositionalwiseFeedForward(d_ffn=64, input_size=width, activation=Swish)
    _assert_same_module(ours, ref, torch.randn(2, 9, width))


@pytest.mark.parametrize("width,causal,dilation", [(474, False, 1), (480, True, 1), (16, False, 2)])
def test_convolution_module_equals_speechbrains(width, causal, dilation):
    """The convolution module, time-major on a CPU (channels-last
    convolutions; at Mamba's width 474 its last product on 480 outputs, cut
    back), gives SpeechBrain's ConvolutionModule's outputs and gradients
    without padding isolation, same parameters, causal or dilated too."""
    from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
    from speechbrain.nnet.activations import Swish

    from lobes.nnet.encoder import MaskedConvolutionModule

    torch.manual_seed(0)
    kw = dict(activation=Swish, dropout=0.0, causal=causal, dilation=dilation)
    ours = MaskedConvolutionModule(width, 7, padding_isolation=False, **kw)
    ref = ConvolutionModule(width, 7, **kw)
    _assert_same_module(ours, ref, torch.randn(2, 11, width))
