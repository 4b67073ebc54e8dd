"""lobes.deploy.convert: checkpoints of SpeechBrain's BEST-RQ recipe and of the
BEST-RQ study's fork become our encoders, with the same numbers.

* SpeechBrain 1.1.2's own encoder (ConvolutionFrontEnd + TransformerASR
  Conformer, built with its recipe's arguments, random weights), saved as a
  checkpoint and converted, gives the same hidden states as ours on a padded
  batch (``padding_isolation=False``), layer by layer, for RelPosMHAXL and
  hypermixing. This checks the whole layer: front-end, FFNs, norms,
  convolution module, positions, final norm.
* For the mixers SpeechBrain lacks (the fork's Fastformer, SummaryMixing and
  Mamba), a checkpoint in the fork's layout (its key names and shapes) is
  converted and our mixer equals a reference computation of the fork's
  equations written directly on the source tensors.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.lobes.models.transformer.TransformerASR import (
    EncoderWrapper,
    TransformerASR,
)
from speechbrain.processing.features import InputNormalization

from lobes.deploy.convert import convert_checkpoint, main
from lobes.deploy.inference import BestRQEncoder
from lobes.nnet.normalization import FeatureNormalizer, read_statistics
from lobes.deploy.loading import encoder_from_checkpoint, load_pretrained
from lobes.nnet.mixers.mamba import selective_scan_ref
from conftest import assert_equals_speechbrain, save_normalizer

D, H, FFN, LAYERS = 64, 4, 128, 2


def speechbrain_encoder(attention_type, activation=torch.nn.GELU, layers=LAYERS):
    """SpeechBrain's BEST-RQ encoder as its recipe builds it (smaller)."""
    cnn = ConvolutionFrontEnd(
        input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1,
        out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2), residuals=(False, False),
    )
    transformer = TransformerASR(
        input_size=640, tgt_vocab=5000, d_model=D, nhead=H, num_encoder_layers=layers,
        num_decoder_layers=0, d_ffn=FFN, dropout=0.1, activation=torch.nn.GELU,
        conformer_activation=activation, encoder_module="conformer",
        attention_type=attention_type, normalize_before=True, causal=False,
    )
    return cnn, EncoderWrapper(transformer)


def save_checkpoint(folder, state):
    """A CKPT+ folder as the recipes write it: model.ckpt + normalize.ckpt."""
    folder.mkdir(parents=True)
    torch.save(state, folder / "model.ckpt")
    norm = InputNormalization(norm_type="global")
    norm(torch.randn(2, 50, 80) * 3 + 1, torch.ones(2))
    save_normalizer(norm, folder / "normalize.ckpt")
    return folder


@pytest.mark.parametrize("attention_type", ["RelPosMHAXL", "hypermixing"])
def test_speechbrains_encoder_converts_to_the_same_hidden_states(attention_type, tmp_path):
    torch.manual_seed(0)
    cnn, wrapper = speechbrain_encoder(attention_type)
    ckpt = save_checkpoint(tmp_path / "CKPT+x", torch.nn.ModuleList([cnn, wrapper]).state_dict())
    out = convert_checkpoint(ckpt, tmp_path / "model", layout="speechbrain", padding_isolation=False)
    ours = encoder_from_checkpoint(out)
    load_pretrained(out, ours)
    assert ours.config["mixer"] == {"RelPosMHAXL": "mhsa", "hypermixing": "hypermixing"}[attention_type]
    assert (ours.config["nhead"], ours.config["d_ffn"], ours.config["activation"]) == (H, FFN, "gelu")

    ref, feats, _ = assert_equals_speechbrain(cnn, wrapper, ours)

    # With padding isolation (the default), unpadded input gives the same too.
    isolated = encoder_from_checkpoint(tmp_path / "model")
    load_pretrained(tmp_path / "model", isolated)
    with torch.no_grad():
        alone = isolated.eval()(feats[:1])
    torch.testing.assert_close(alone[0], ref[0], atol=1e-5, rtol=1e-5)


def test_the_command_line_refuses_what_it_cannot_map(tmp_path, capsys):
    torch.manual_seed(0)
    cnn, wrapper = speechbrain_encoder("RelPosMHAXL")
    state = torch.nn.ModuleList([cnn, wrapper]).state_dict()
    state["1.transformer.encoder.layers.0.mha_layer.something_new"] = torch.zeros(3)
    ckpt = save_checkpoint(tmp_path / "CKPT+x", state)
    assert main(["--checkpoint", str(ckpt), "--layout", "speechbrain", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "keys this converter cannot map" in err and "mha_layer.something_new" in err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(tmp_path / "empty"), "--layout", "speechbrain", "--out", str(tmp_path / "m")]) == 1
    assert "No checkpoint in" in capsys.readouterr().err


# --------------------------------------------------------------------------
# The fork's own mixers, in its layout


def fork_checkpoint(tmp_path, mixer_state, extra=None):
    """A fork checkpoint: SpeechBrain's encoder with each layer's mha_layer
    replaced by ``mixer_state`` (fork key names), plus quantiser and head."""
    torch.manual_seed(0)
    cnn, wrapper = speechbrain_encoder("regularMHA", activation=lambda: torch.nn.SiLU())
    state = {
        k: v for k, v in torch.nn.ModuleList([cnn, wrapper]).state_dict().items()
        if ".mha_layer." not in k
    }
    for i in range(LAYERS):
        for k, v in mixer_state.items():
            state[f"1.transformer.encoder.layers.{i}.mha_layer.{k}"] = v
    state.update({"2.P": torch.randn(320, 16), "2.CB": torch.randn(8192, 16),
                  "3.w.weight": torch.randn(8192, D), "3.w.bias": torch.randn(8192)})
    ckpt = save_checkpoint(tmp_path / "CKPT+fork", state)
    out = convert_checkpoint(ckpt, tmp_path / "model", layout="authors", padding_isolation=False)
    encoder = encoder_from_checkpoint(out)
    load_pretrained(out, encoder)
    assert encoder.config["activation"] == "swish" and encoder.config["layerdrop_prob"] == 0.05
    return encoder.eval()


def rand(*shape):
    return torch.randn(*shape) * 0.2


def test_fork_fastformer_converts_and_equals_the_forks_equations(tmp_path):
    src = {
        "query_proj.weight": rand(D, D), "query_proj.bias": rand(D),
        "query_attn.weight": rand(H, D), "query_attn.bias": rand(H),
        "key_proj.weight": rand(D, D), "key_proj.bias": rand(D),
        "key_attn.weight": rand(H, D), "key_attn.bias": rand(H),
        "out_proj.weight": rand(D, D), "out_proj.bias": rand(D),
    }
    encoder = fork_checkpoint(tmp_path, src)
    assert encoder.config["mixer"] == "fastformer" and encoder.config["nhead"] == H
    x = torch.randn(2, 11, D)
    pad = torch.arange(11)[None] >= torch.tensor([[11], [7]])
    dh = D // H

    def pool(scores, content, b, n):  # softmax over the n valid frames, per head
        w = torch.softmax(scores[b, :n] / math.sqrt(dh), dim=0)  # (n, H)
        return torch.einsum("th,thd->hd", w, content[b, :n].view(n, H, dh)).reshape(D)

    with torch.no_grad():
        out = encoder.layers[0].mixer(x, pad)
        q = F.linear(x, src["query_proj.weight"], src["query_proj.bias"])
        k = F.linear(x, src["key_proj.weight"], src["key_proj.bias"])
        for b, n in enumerate([11, 7]):
            q_g = pool(F.linear(q, src["query_attn.weight"], src["query_attn.bias"]), q, b, n)
            kc = k * q_g
            k_g = pool(F.linear(kc, src["key_attn.weight"], src["key_attn.bias"]), kc, b, n)
            ref = F.linear(q[b, :n] * k_g, src["out_proj.weight"], src["out_proj.bias"]) + q[b, :n]
            torch.testing.assert_close(out[b, :n], ref, atol=1e-5, rtol=1e-5)


def test_fork_summarymixing_converts_and_equals_the_forks_equations(tmp_path):
    L_HID, L_OUT, S_HID = 24, 20, 40
    src = {
        "local_proj.linear.w.weight": rand(L_HID, D), "local_proj.linear.w.bias": rand(L_HID),
        "local_proj.linear_0.w.weight": rand(L_OUT, L_HID), "local_proj.linear_0.w.bias": rand(L_OUT),
        "summary_proj.linear.w.weight": rand(S_HID, D), "summary_proj.linear.w.bias": rand(S_HID),
        "summary_proj.linear_0.w.weight": rand(D, S_HID), "summary_proj.linear_0.w.bias": rand(D),
        "summary_local_merging.linear.w.weight": rand(D, L_OUT + D),
        "summary_local_merging.linear.w.bias": rand(D),
        "local_norm.weight": 1 + rand(L_OUT), "local_norm.bias": rand(L_OUT),
        "summary_norm.weight": 1 + rand(D), "summary_norm.bias": rand(D),
    }
    encoder = fork_checkpoint(tmp_path, src)
    assert encoder.config["mixer"] == "summarymixing"
    assert encoder.config["mixer_kwargs"] == {
        "summary_hid_dim": [S_HID], "local_proj_hid_dim": [L_HID], "local_proj_out_dim": L_OUT}
    x = torch.randn(2, 9, D)
    pad = torch.arange(9)[None] >= torch.tensor([[9], [4]])
    swish = F.silu  # SpeechBrain's Swish is x * sigmoid(x)

    def mlp(v, name):
        v = swish(F.linear(v, src[f"{name}.linear.w.weight"], src[f"{name}.linear.w.bias"]))
        return swish(F.linear(v, src[f"{name}.linear_0.w.weight"], src[f"{name}.linear_0.w.bias"]))

    with torch.no_grad():
        out = encoder.layers[0].mixer(x, pad)
        for b, n in enumerate([9, 4]):
            local = F.layer_norm(mlp(x[b, :n], "local_proj"), (L_OUT,), src["local_norm.weight"], src["local_norm.bias"])
            summary = mlp(x[b, :n], "summary_proj").sum(0) / n
            summary = F.layer_norm(summary, (D,), src["summary_norm.weight"], src["summary_norm.bias"])
            merged = torch.cat([local, summary.expand(n, D)], dim=-1)
            ref = swish(F.linear(merged, src["summary_local_merging.linear.w.weight"],
                                 src["summary_local_merging.linear.w.bias"]))
            torch.testing.assert_close(out[b, :n], ref, atol=1e-5, rtol=1e-5)


def mamba_ref(src, prefix, x):
    """mamba_ssm's Mamba (Gu and Dao 2023) on (T, D), from the source tensors."""
    p = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
    T = x.shape[0]
    xz = x @ p["in_proj.weight"].t()
    u, z = xz.chunk(2, dim=-1)  # (T, D_in)
    d_conv = p["conv1d.weight"].shape[-1]
    u = F.conv1d(u.t()[None], p["conv1d.weight"], p["conv1d.bias"], padding=d_conv - 1,
                 groups=u.shape[1])[0, :, :T]
    u = F.silu(u)  # (D_in, T)
    n_state = p["A_log"].shape[1]
    dbc = u.t() @ p["x_proj.weight"].t()
    dt_rank = dbc.shape[1] - 2 * n_state
    dt, Bm, Cm = dbc.split([dt_rank, n_state, n_state], dim=-1)
    delta = F.softplus(dt @ p["dt_proj.weight"].t() + p["dt_proj.bias"])  # (T, D_in)
    y = selective_scan_ref(u[None], delta.t()[None], -torch.exp(p["A_log"]), Bm.t()[None],
                           Cm.t()[None], p["D"])[0]
    return (y.t() * F.silu(z)) @ p["out_proj.weight"].t()


def test_fork_mamba_block_converts_and_equals_the_forks_equations(tmp_path):
    d_in, n_state, rank = 2 * D, 16, math.ceil(D / 16)
    src = {"forward_blocks.0.norm.weight": 1 + rand(D)}
    for direction in ("fwd", "rev"):
        p = f"forward_blocks.0.mixer.mamba_{direction}."
        src.update({
            p + "in_proj.weight": rand(2 * d_in, D), p + "conv1d.weight": rand(d_in, 1, 4),
            p + "conv1d.bias": rand(d_in), p + "x_proj.weight": rand(rank + 2 * n_state, d_in),
            p + "dt_proj.weight": rand(d_in, rank), p + "dt_proj.bias": rand(d_in) - 3,
            p + "A_log": torch.log(torch.arange(1, n_state + 1.0)).repeat(d_in, 1) + rand(d_in, n_state),
            p + "D": 1 + rand(d_in), p + "out_proj.weight": rand(D, d_in),
        })
    encoder = fork_checkpoint(tmp_path, src)
    assert encoder.config["mixer"] == "mamba"
    assert encoder.config["mixer_kwargs"] == {"d_state": 16, "d_conv": 4, "expand": 2}
    x = torch.randn(1, 13, D)
    with torch.no_grad():
        out = encoder.layers[0].mixer(x)
        h = x[0] * torch.rsqrt(x[0].pow(2).mean(-1, keepdim=True) + 1e-5) * src["forward_blocks.0.norm.weight"]
        fwd = mamba_ref(src, "forward_blocks.0.mixer.mamba_fwd.", h)
        rev = mamba_ref(src, "forward_blocks.0.mixer.mamba_rev.", h.flip(0)).flip(0)
        torch.testing.assert_close(out[0], x[0] + fwd + rev, atol=1e-4, rtol=1e-4)


RECIPE_YAML = Path(__file__).parents[1] / "data" / "speechbrain_bestrq_recipe.yaml"


def speechbrain_recipe_run(output_folder, attention_type="RelPosMHAXL"):
    """A checkpoint written the way SpeechBrain's BEST-RQ recipe writes it:
    its YAML's modules, normaliser (``norm_type: sentence``) and Checkpointer,
    one training-mode pass of its feature pipeline, its ``hyperparams.yaml``
    copied into the output folder (``sb.create_experiment_directory``)."""
    output_folder.mkdir(parents=True)
    text = RECIPE_YAML.read_text()
    (output_folder / "hyperparams.yaml").write_text(text)
    hparams = load_hyperpyyaml(text, {"output_folder": str(output_folder),
                                      "attention_type": attention_type})
    wavs = torch.randn(2, 16000)
    feats = hparams["compute_features"](wavs)
    feats = hparams["normalize"].train()(feats, torch.tensor([1.0, 0.8]), epoch=1)
    hparams["wrapper"](hparams["CNN"](feats), torch.tensor([1.0, 0.8]))
    hparams["checkpointer"].save_checkpoint()
    return hparams


@pytest.mark.parametrize("attention_type", ["RelPosMHAXL", "hypermixing"])
def test_speechbrain_recipe_checkpoint_with_sentence_normalisation(attention_type, tmp_path):
    """The recipe's checkpoint (normalize.ckpt without statistics) converts;
    the model folder records per-utterance normalisation, and the inference
    interface computes what the recipe's modules compute from waveforms."""
    torch.manual_seed(0)
    hp = speechbrain_recipe_run(tmp_path / "results", attention_type)
    stored = torch.load(next((tmp_path / "results" / "save").glob("CKPT+*/normalize.ckpt")))
    assert stored["count"] == 0 and stored["glob_mean"].numel() == 0  # what SpeechBrain saves

    out = convert_checkpoint(tmp_path / "results" / "save", tmp_path / "model",
                             layout="speechbrain", padding_isolation=False)
    assert read_statistics(out / "normalizer.ckpt")["method"] == "sentence"
    assert "sentence" in (out / "README.md").read_text()

    # Inference, as a user runs it, against the recipe's own pipeline
    # (Fbank, sentence normalisation, CNN, Transformer encoder) in eval mode.
    encoder = BestRQEncoder.from_hparams(source=str(out))
    wavs = torch.randn(3, 160 * 399) * torch.tensor([[1.0], [3.0], [0.2]])  # 400 frames: no pad_feats
    lens = torch.tensor([1.0, 0.71, 0.5])
    got = encoder.encode_batch(wavs, lens)
    for module in (hp["normalize"], hp["CNN"], hp["wrapper"]):
        module.eval()
    with torch.no_grad():
        feats = hp["normalize"](hp["compute_features"](wavs), lens)
        ref = hp["wrapper"](hp["CNN"](feats), lens)
    for b, n in enumerate(got.frames):
        torch.testing.assert_close(got.hidden_states[-1][b, :n], ref[b, :n], atol=2e-5, rtol=1e-5)

    # Probes and fine-tuning build FeatureNormalizer() and load the folder.
    normalizer = FeatureNormalizer()
    load_pretrained(out, encoder_from_checkpoint(out), normalizer)
    assert normalizer.method == "sentence"


def test_sentence_normalisation_is_refused_when_the_run_normalised_globally(tmp_path, capsys):
    """A normalize.ckpt without statistics from a run whose YAML says
    norm_type: global was not trained with them: refused, naming the file;
    --normalization sentence overrides."""
    torch.manual_seed(0)
    speechbrain_recipe_run(tmp_path / "results")
    yaml_file = tmp_path / "results" / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("norm_type: sentence", "norm_type: global"))
    args = ["--checkpoint", str(tmp_path / "results" / "save"), "--layout", "speechbrain",
            "--out", str(tmp_path / "model")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "normalize.ckpt holds no feature statistics" in err and "norm_type: global" in err
    assert not (tmp_path / "model").exists()
    assert main(args + ["--normalization", "sentence"]) == 0
    assert "feature normalisation: sentence" in capsys.readouterr().out


def test_pre_1_1_sentence_normaliser_file_reads_as_sentence(tmp_path):
    """SpeechBrain before 1.1 saved a per-sentence normaliser as count 0,
    glob_mean tensor([0]) and speaker dicts: converted as per-utterance."""
    torch.manual_seed(0)
    cnn, wrapper = speechbrain_encoder("RelPosMHAXL")
    folder = tmp_path / "CKPT+old"
    folder.mkdir()
    torch.save(torch.nn.ModuleList([cnn, wrapper]).state_dict(), folder / "model.ckpt")
    torch.save({"count": 0, "glob_mean": torch.tensor([0]), "glob_std": torch.tensor([0]),
                "spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}},
               folder / "normalize.ckpt")
    out = convert_checkpoint(folder, tmp_path / "model", layout="speechbrain")
    assert read_statistics(out / "normalizer.ckpt")["method"] == "sentence"
    (folder / "normalize.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="--normalization sentence"):
        convert_checkpoint(folder, tmp_path / "model2", layout="speechbrain")
    out = convert_checkpoint(folder, tmp_path / "model2", layout="speechbrain", normalization="sentence")
    assert read_statistics(out / "normalizer.ckpt")["method"] == "sentence"
