"""lobes.nnet.speechbrain_adapter: our mixers inside SpeechBrain's own models.

SpeechBrain's BEST-RQ encoder (``ConvolutionFrontEnd`` + ``TransformerASR``
Conformer, as its recipe builds it, smaller) with each registered mixer put
in place of its attention computes what our ``ConformerEncoder`` computes
with the same weights (``padding_isolation: False``, SpeechBrain's padding),
layer by layer, on a padded batch. The weights go from SpeechBrain's model to
ours through the converter's mapping (``lobes.deploy.convert``), which is
also what a user runs on such a checkpoint.
"""

import io

import pytest
import torch
from conftest import ALL_MIXERS, assert_equals_speechbrain, save_normalizer
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.lobes.models.transformer.TransformerASR import EncoderWrapper, TransformerASR
from speechbrain.nnet.activations import Swish
from speechbrain.processing.features import InputNormalization

from lobes.deploy.convert import infer_config, main, map_state, split_source
from lobes.deploy.loading import encoder_from_checkpoint, load_pretrained
from lobes.nnet.encoder import ConformerEncoder
from lobes.nnet.mixers import MIXERS
from lobes.nnet.speechbrain_adapter import (
    MixerAttention,
    replace_attention,
    speechbrain_attention_type,
)

D, FFN, LAYERS = 32, 64, 2


def heads(mixer):
    return 1 if mixer.startswith("summarymixing") else 4


def speechbrain_bestrq(mixer, layers=LAYERS):
    """SpeechBrain's BEST-RQ model (its recipe's modules) with ``mixer`` in
    every Conformer layer: ``ModuleList([CNN, EncoderWrapper])``."""
    cnn = ConvolutionFrontEnd(
        input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1,
        out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2), residuals=(False, False),
    )
    transformer = TransformerASR(
        input_size=640, tgt_vocab=10, d_model=D, nhead=4, num_encoder_layers=layers,
        num_decoder_layers=0, d_ffn=FFN, dropout=0.1, activation=torch.nn.GELU,
        conformer_activation=Swish, encoder_module="conformer",
        attention_type=speechbrain_attention_type(mixer), normalize_before=True, causal=False,
    )
    model = torch.nn.ModuleList([cnn, EncoderWrapper(transformer)])
    replace_attention(model, mixer, nhead=heads(mixer), mixer_kwargs=MIXERS[mixer].small_kwargs,
                      padding_isolation=False)
    return model


def ours_from(state):
    """Our encoder with the weights of a SpeechBrain state dict, through the
    converter's mapping (``padding_isolation: False``)."""
    frontend, transformer = split_source(state)
    config = infer_config(frontend, transformer, "speechbrain", activation="swish")
    config["padding_isolation"] = False
    mapped, unmapped, _ = map_state(frontend, transformer, config["mixer"])
    assert not unmapped, unmapped
    encoder = ConformerEncoder.from_config(config)
    ours = encoder.state_dict()
    assert not [k for k in mapped if k not in ours]
    for key in ours:  # what our encoder computes itself (architecture record, inv_freq)
        if key not in mapped:
            assert key == "_extra_state" or key.endswith("inv_freq"), key
            mapped[key] = ours[key]
    encoder.load_state_dict(mapped)  # strict: every parameter filled
    return encoder


@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_speechbrains_conformer_with_our_mixer_equals_our_encoder(mixer):
    torch.manual_seed(0)
    model = speechbrain_bestrq(mixer)
    cnn, wrapper = model
    layer = wrapper.transformer.encoder.layers[0]
    assert isinstance(layer.mha_layer, MixerAttention)
    assert isinstance(layer.mha_layer.mixer, MIXERS[mixer].cls)

    ours = ours_from(model.state_dict())
    assert ours.config["mixer"] == mixer and ours.config["nhead"] == heads(mixer)
    for key, value in MIXERS[mixer].small_kwargs.items():
        assert ours.config["mixer_kwargs"][key] == value

    _, feats, lens = assert_equals_speechbrain(cnn, wrapper, ours)

    # Training mode runs too (dropout, gradients reach every mixer parameter).
    model.train()
    wrapper(cnn(feats), lens).pow(2).mean().backward()
    missing = [n for n, p in layer.mha_layer.named_parameters() if p.grad is None]
    assert not missing, missing


def test_a_checkpoint_converts_from_the_command_line(tmp_path):
    """SpeechBrain's BEST-RQ checkpoint with SummaryMixing swapped in becomes
    our model folder with ``python -m lobes.deploy.convert --layout speechbrain``."""
    torch.manual_seed(0)
    model = speechbrain_bestrq("summarymixing")
    ckpt = tmp_path / "save" / "CKPT+x"
    ckpt.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt / "model.ckpt")
    norm = InputNormalization(norm_type="global")
    norm(torch.randn(2, 50, 80) * 3 + 1, torch.ones(2))
    save_normalizer(norm, ckpt / "normalize.ckpt")
    out = tmp_path / "model"
    assert main(["--checkpoint", str(ckpt), "--layout", "speechbrain", "--activation", "swish",
                 "--padding_isolation", "false", "--out", str(out)]) == 0
    encoder = encoder_from_checkpoint(out)
    load_pretrained(out, encoder)
    assert encoder.config["mixer"] == "summarymixing"
    cnn, wrapper = model.eval()
    feats = torch.randn(1, 120, 80)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(feats), wrapper(cnn(feats)), atol=1e-5, rtol=1e-5)


def test_from_hyperpyyaml_as_in_speechbrains_recipe():
    """The README's YAML: SpeechBrain's BEST-RQ modules, then
    ``!apply:replace_attention``; the recipe's other entries (modules,
    ModuleList, optimizer) see the swapped model."""
    yaml = f"""
d_model: {D}
CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd
    input_shape: (8, 10, 80)
    num_blocks: 2
    num_layers_per_block: 1
    out_channels: (128, 32)
    kernel_sizes: (3, 3)
    strides: (2, 2)
    residuals: (False, False)
Transformer: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
    input_size: 640
    tgt_vocab: 10
    d_model: !ref <d_model>
    nhead: 4
    num_encoder_layers: 2
    num_decoder_layers: 0
    d_ffn: {FFN}
    dropout: 0.1
    activation: !name:torch.nn.GELU
    conformer_activation: !name:torch.nn.GELU
    encoder_module: conformer
    attention_type: regularMHA
    normalize_before: True
    causal: False
wrapper: !new:speechbrain.lobes.models.transformer.TransformerASR.EncoderWrapper
    transformer: !ref <Transformer>
model: !new:torch.nn.ModuleList
    - [!ref <CNN>, !ref <wrapper>]
use_summarymixing: !apply:lobes.nnet.speechbrain_adapter.replace_attention
    model: !ref <Transformer>
    mixer: summarymixing
    mixer_kwargs:
        local_proj_hid_dim: [16]
        local_proj_out_dim: 16
        summary_hid_dim: [16]
"""
    hparams = load_hyperpyyaml(io.StringIO(yaml))
    layers = hparams["model"][1].transformer.encoder.layers
    attn = layers[0].mha_layer
    assert isinstance(attn, MixerAttention) and attn.mixer_name == "summarymixing"
    assert attn.nhead == 1  # the definition's (the paper's) heads
    assert isinstance(attn.mixer.combiner[1], torch.nn.GELU)  # the Conformer's activation
    params = {id(p) for p in hparams["model"].parameters()}
    assert all(id(p) in params for p in attn.parameters())
    out = hparams["wrapper"](hparams["CNN"](torch.randn(2, 40, 80)), torch.tensor([1.0, 0.5]))
    assert out.shape == (2, 10, D)


def test_what_it_refuses():
    torch.manual_seed(0)
    asr = TransformerASR(
        input_size=20, tgt_vocab=10, d_model=16, nhead=2, num_encoder_layers=1,
        num_decoder_layers=0, d_ffn=32, encoder_module="conformer",
        attention_type="RelPosMHAXL", normalize_before=True, causal=False,
    )
    with pytest.raises(ValueError, match="attention_type: regularMHA and positional_encoding: fixed_abs_sine"):
        replace_attention(asr, "summarymixing")
    with pytest.raises(ValueError, match="Unknown token mixer 'summary_mixing'"):
        replace_attention(asr, "summary_mixing")
    with pytest.raises(ValueError, match="Unknown summarymixing mixer argument"):
        replace_attention(asr, "summarymixing", mixer_kwargs={"local_hid": [8]}, check_positions=False)
    with pytest.raises(ValueError, match="holds no SpeechBrain ConformerEncoderLayer"):
        replace_attention(torch.nn.Linear(2, 2), "mhsa")
    replace_attention(asr, "mhsa", nhead=2)
    attn = asr.encoder.layers[0].mha_layer
    x = torch.rand(2, 6, 16)
    with pytest.raises(ValueError, match="cannot be causal or chunked"):
        attn(x, x, x, attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1))
    with pytest.raises(ValueError, match="must be its query"):
        attn(x, torch.rand(2, 6, 16), x)
    # weights of another mixer are refused by name
    other = MixerAttention("fastformer", 16, nhead=2)
    with pytest.raises(ValueError, match="another mixer"):
        attn.load_state_dict(other.state_dict())
