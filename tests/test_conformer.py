"""Conformer encoder: every mixer plugs in, padding never leaks, bad names fail."""

import pytest
import torch

from lobes.encoder import ConformerEncoder, ConvFrontEnd
from lobes.mixers import MIXERS

SMALL = dict(num_layers=2, d_model=32, nhead=4, d_ffn=64, kernel_size=5, dropout=0.0)
SMALL_KWARGS = {
    "summarymixing": {"local_proj_hid_dim": [32], "summary_hid_dim": [32]},
    "summarymixing_lite": {"summary_hid_dim": [32]},
    "hypermixing": {"hypernet_size": 64},
}


def small_encoder(mixer, **kw):
    return ConformerEncoder(
        mixer, mixer_kwargs=SMALL_KWARGS.get(mixer), **{**SMALL, **kw}
    ).eval()


@pytest.mark.parametrize("mixer", sorted(MIXERS))
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


@pytest.mark.parametrize("mixer", sorted(MIXERS))
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
    x = torch.randn(1, 30, 80)
    padded = torch.cat([x, torch.randn(1, 20, 80)], dim=1)
    with torch.no_grad():
        a, la = fe(x, torch.tensor([30]))
        b, lb = fe(padded * (torch.arange(50) < 30)[None, :, None], torch.tensor([30]))
    assert la.item() == lb.item() == 8
    torch.testing.assert_close(b[:, :8], a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels,kernels", [((128, 32), (3, 3)), ((16, 8), (5, 3))])
def test_frontend_equals_speechbrains_blocks(channels, kernels):
    """ConvFrontEnd convolves a channels_last view instead of letting
    SpeechBrain's Conv2d transpose the activation twice; the numbers (and
    the state dict) must stay those of SpeechBrain's own blocks."""
    from speechbrain.dataio.dataio import length_to_mask

    torch.manual_seed(0)
    fe = ConvFrontEnd(80, channels, kernels).eval()
    x, lens = torch.randn(3, 101, 80), torch.tensor([101, 77, 40])
    out, out_lens = fe(x, lens)
    ref, ref_lens = x, lens
    for block, s in zip(fe.cnn.children(), fe.strides):
        ref = block(ref)  # SpeechBrain's ConvBlock.forward
        ref_lens = torch.div(ref_lens + s - 1, s, rounding_mode="floor")
        ref = ref * length_to_mask(ref_lens, ref.shape[1]).bool()[:, :, None, None]
    assert out_lens.tolist() == ref_lens.tolist()
    torch.testing.assert_close(out, ref.flatten(2), atol=2e-5, rtol=1e-5)
    assert out.is_contiguous()


def test_unknown_mixer_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="Unknown token mixer 'attention'.*summarymixing"):
        ConformerEncoder("attention", **SMALL)


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
