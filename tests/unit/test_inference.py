"""Using a pretrained encoder: export, BestRQEncoder, the extract CLI.

Round trip on a real demo pretraining run (the shared ``pretrained_demo``
fixture): train -> export -> ``BestRQEncoder.from_hparams`` -> features equal
those of the training checkpoint's encoder built directly. Plus: mismatched
folders are refused, long inputs work for the linear mixers, and a Mamba
checkpoint made on the CUDA-kernel code path loads and runs on CPU.
"""

import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml
from conftest import PAPER_LINEAR_MIXERS, PROBE_LAYERS, REPO, save_normalizer
from demo_overrides import demo_encoder_override
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

import lobes.nnet.mixers.mamba
from lobes.dataio.audio import load_audio
from lobes.deploy.export import export_encoder
from lobes.deploy.export import main as export_main
from lobes.deploy.extract import main as extract_main
from lobes.deploy.inference import BestRQEncoder
from lobes.deploy.loading import encoder_from_checkpoint, load_pretrained
from lobes.nnet.encoder import ConformerEncoder
from lobes.nnet.normalization import FeatureNormalizer

ATOL = 1e-5
TINY_MIXER_KWARGS = {
    "hypermixing": {"hypernet_size": 32},
    "summarymixing": {"local_proj_hid_dim": [32], "local_proj_out_dim": 16, "summary_hid_dim": [32]},
    "mamba": {"d_state": 4, "d_conv": 4, "expand": 2},
    "fastformer": {},
}


def cpu_encoder(folder, savedir=None):
    return BestRQEncoder.from_hparams(
        source=str(folder), savedir=savedir, run_opts={"device": "cpu"}
    )


def demo_encoder_args(mixer):
    """The demo encoder's constructor arguments (as the pretraining run)."""
    override = demo_encoder_override(mixer, PROBE_LAYERS)
    return yaml.safe_load(override.split("=", 1)[1])


@pytest.fixture(scope="module")
def demo_wavs(demo_data):
    wavs = sorted((demo_data / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    assert len(wavs) >= 2
    return wavs[:2]


@pytest.fixture(scope="module")
def exported(pretrained_demo, tmp_path_factory):
    """A real demo pretraining run, exported with the command line."""
    run = pretrained_demo("summarymixing")
    out = tmp_path_factory.mktemp("exported") / "bestrq_summarymixing"
    assert export_main(["--checkpoint", str(run / "save"), "--out", str(out)]) == 0
    return run, out


def reference_hidden(run, wav):
    """Hidden states of the training checkpoint's encoder, built directly."""
    encoder = ConformerEncoder("summarymixing", **demo_encoder_args("summarymixing"))
    normalizer = FeatureNormalizer()  # the pretraining's method and statistics
    load_pretrained(run / "save", encoder, normalizer)
    encoder.eval()
    normalizer.eval()
    fbank = Fbank(sample_rate=16000, n_fft=400, n_mels=80, hop_length=10)
    with torch.no_grad():
        feats = normalizer(fbank(load_audio(wav).unsqueeze(0)), torch.ones(1))
        _, hidden = encoder(feats, torch.ones(1), return_hidden=True)
    return hidden


def test_round_trip_train_export_load_equals_training_encoder(exported, demo_wavs, tmp_path):
    run, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "encoder.ckpt", "hyperparams.yaml", "normalizer.ckpt",
    ]
    encoder = cpu_encoder(folder, savedir=tmp_path / "savedir")
    assert not encoder.mods.encoder.training and not encoder.mods.normalizer.training
    out = encoder.encode_file(demo_wavs[0])
    ref = reference_hidden(run, demo_wavs[0])
    assert len(out.hidden_states) == len(ref) == PROBE_LAYERS + 1
    for got, want in zip(out.hidden_states, ref):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert out.frames.tolist() == [ref[0].shape[1]]

    # A padded batch gives each utterance its own features.
    wavs = [load_audio(w) for w in demo_wavs]
    longest = max(len(w) for w in wavs)
    batch = torch.stack([F.pad(w, (0, longest - len(w))) for w in wavs])
    lens = torch.tensor([len(w) / longest for w in wavs])
    weights = torch.softmax(torch.arange(PROBE_LAYERS + 1.0), 0)
    both = encoder.encode_batch(batch, lens, layer_weights=weights)
    for i, wav in enumerate(demo_wavs):
        one = encoder.encode_file(wav)
        n = int(both.frames[i])
        assert n == int(one.frames[0])
        torch.testing.assert_close(
            both.hidden_states[-1][i, :n], one.hidden_states[-1][0], atol=1e-4, rtol=0
        )
    want = sum(w * h for w, h in zip(weights, both.hidden_states))
    torch.testing.assert_close(both.weighted_sum, want, atol=1e-5, rtol=0)

    # Exporting one CKPT+ folder (the checkpoint alone) writes the same YAML.
    ckpt = max((run / "save").glob("CKPT+*"))
    again = export_encoder(ckpt, tmp_path / "again")
    assert (again / "hyperparams.yaml").read_text().split("\n", 3)[3] == (
        folder / "hyperparams.yaml").read_text().split("\n", 3)[3]

    # The exported folder is a pretrained_path for the probes, too: they
    # rebuild the encoder from it alone.
    probe_encoder = encoder_from_checkpoint(folder)
    assert probe_encoder.config["mixer"] == "summarymixing"
    load_pretrained(folder, probe_encoder, InputNormalization())

    # The model card.
    card = (folder / "README.md").read_text()
    steps = max(yaml.safe_load(c.read_text())["steps"] for c in (run / "save").glob("CKPT+*/CKPT.yaml"))
    n_params = sum(p.numel() for p in probe_encoder.parameters())
    for text in ("summarymixing", f"| layers | {PROBE_LAYERS} |", "| width (d_model) | 88 |",
                 f"({n_params})", f"| pretraining steps | {steps} |", "train.csv"):
        assert text in card, text


def test_extract_cli_writes_one_file_per_input(exported, demo_wavs, tmp_path):
    _, folder = exported
    file_list = tmp_path / "files.txt"
    file_list.write_text("# demo files\n" + "\n".join(map(str, demo_wavs)) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lobes.deploy.extract", "--model", str(folder),
         "--list", str(file_list), "--out", str(tmp_path / "feats")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Encoding" in proc.stderr  # the tqdm bar
    encoder = cpu_encoder(folder)
    refs = [encoder.encode_file(wav).hidden_states for wav in demo_wavs]
    for wav, ref in zip(demo_wavs, refs):
        saved = torch.load(tmp_path / "feats" / f"{wav.stem}.pt")
        assert saved["layers"] == "all" and saved["wav"] == str(wav)
        torch.testing.assert_close(saved["features"], torch.stack([h[0] for h in ref]))

    # One file, last layer, in-process; and a clear error for a bad input.
    assert extract_main(["--model", str(folder), "--wav", str(demo_wavs[0]),
                         "--out", str(tmp_path / "one.pt"), "--layers", "last"]) == 0
    torch.testing.assert_close(torch.load(tmp_path / "one.pt")["features"], refs[0][-1][0])
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    assert extract_main(["--model", str(folder), "--wav", str(bad),
                         "--out", str(tmp_path / "bad.pt")]) == 1
    assert extract_main(["--model", str(folder), "--wav", str(demo_wavs[0]),
                         "--out", str(tmp_path / "w.pt"), "--layers", "weighted",
                         "--layer_weights", "0.5,0.5"]) == 1  # L+1 = 3 weights


def test_extract_skipped_files_fail_the_command_and_same_stems_stay_apart(
    exported, demo_wavs, tmp_path, capsys
):
    """--skip_errors goes on past a bad file but exits with status 2 (0 with
    --allow_skipped); a.wav and a.mp3 of one folder give two outputs."""
    _, folder = exported
    audio, rate = sf.read(str(demo_wavs[0]), dtype="float32")
    same = tmp_path / "in"
    same.mkdir()
    sf.write(same / "a.wav", audio, rate)
    sf.write(same / "a.mp3", audio, rate)
    bad = same / "b.wav"
    bad.write_bytes(b"not audio")
    args = ["--model", str(folder), "--wav", str(same / "a.wav"), str(same / "a.mp3"),
            str(bad), "--skip_errors"]
    assert extract_main([*args, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and "1 of 3 file(s) skipped" in err
    assert sorted(p.name for p in (tmp_path / "strict").iterdir()) == ["a.mp3.pt", "a.wav.pt"]
    wav_feats = torch.load(tmp_path / "strict/a.wav.pt")
    mp3_feats = torch.load(tmp_path / "strict/a.mp3.pt")
    assert (wav_feats["wav"], mp3_feats["wav"]) == (str(same / "a.wav"), str(same / "a.mp3"))
    assert extract_main([*args, "--allow_skipped", "--out", str(tmp_path / "lenient")]) == 0
    assert len(list((tmp_path / "lenient").iterdir())) == 2


def test_mismatched_model_folder_is_refused(exported, tmp_path):
    _, folder = exported
    args = demo_encoder_args("summarymixing")

    # encoder.ckpt of another mixer than its hyperparams.yaml
    other_mixer = tmp_path / "other_mixer"
    shutil.copytree(folder, other_mixer)
    fast = ConformerEncoder("fastformer", **{**args, "nhead": 4, "mixer_kwargs": {}})
    torch.save(fast.state_dict(), other_mixer / "encoder.ckpt")
    with pytest.raises(ValueError, match="mixer: checkpoint 'fastformer' vs this model 'summarymixing'"):
        cpu_encoder(other_mixer)

    # hyperparams.yaml of another width than its encoder.ckpt
    other_width = tmp_path / "other_width"
    shutil.copytree(folder, other_width)
    text = (other_width / "hyperparams.yaml").read_text()
    assert "\n  d_model: 88\n" in text
    (other_width / "hyperparams.yaml").write_text(text.replace("\n  d_model: 88\n", "\n  d_model: 96\n"))
    with pytest.raises(ValueError, match="d_model: checkpoint 88 vs this model 96"):
        cpu_encoder(other_width)

    # the probes' loader refuses it too
    with pytest.raises(ValueError, match="d_model: checkpoint 88 vs this model 64"):
        load_pretrained(folder, ConformerEncoder("summarymixing", **{**args, "d_model": 64}))

    with pytest.raises(FileNotFoundError, match="does not exist"):
        cpu_encoder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="lobes.deploy.export"):
        cpu_encoder(tmp_path)  # a folder without hyperparams.yaml


def test_export_needs_nothing_but_the_checkpoint(tmp_path):
    """Every constructor argument is in the checkpoint: the exported YAML
    carries them all (no YAML read), and rebuilds the encoder exactly."""
    args = tiny_args("summarymixing")
    encoder = ConformerEncoder("summarymixing", **args)
    ckpt = make_checkpoint(tmp_path / "CKPT+x", encoder)
    folder = export_encoder(ckpt, tmp_path / "model")
    text = (folder / "hyperparams.yaml").read_text()
    exported = yaml.safe_load(text.split("\nencoder:")[0])
    assert exported["encoder_config"] == encoder.config
    assert "pretraining data | unknown" in (folder / "README.md").read_text()
    assert cpu_encoder(folder).mods.encoder.config == encoder.config
    old = tmp_path / "CKPT+old"  # a checkpoint without the full record
    make_checkpoint(old, encoder)
    state = torch.load(old / "model.ckpt")
    state["0._extra_state"] = {k: v for k, v in state["0._extra_state"].items() if k != "init"}
    torch.save(state, old / "model.ckpt")
    with pytest.raises(ValueError, match="does not describe its encoder completely"):
        export_encoder(old, tmp_path / "old_model")


def make_checkpoint(folder, encoder):
    """A pretraining-like CKPT folder: model.ckpt [encoder, head], normalize.ckpt."""
    folder.mkdir(parents=True)
    model = torch.nn.ModuleList([encoder, torch.nn.Linear(encoder.d_model, 8)])
    torch.save(model.state_dict(), folder / "model.ckpt")
    norm = InputNormalization()
    norm(torch.randn(2, 50, 80) * 3 + 1, torch.ones(2))
    save_normalizer(norm, folder / "normalize.ckpt")
    return folder


def tiny_args(mixer, **mixer_kwargs):
    return {
        "num_layers": 1, "d_model": 32, "nhead": 1 if mixer in ("summarymixing", "mamba") else 2,
        "d_ffn": 64, "kernel_size": 3, "dropout": 0.0,
        "mixer_kwargs": {**TINY_MIXER_KWARGS[mixer], **mixer_kwargs},
    }


@pytest.mark.parametrize("mixer", PAPER_LINEAR_MIXERS)
def test_long_input_linear_mixers(mixer, tmp_path):
    """Two minutes of audio in one pass, no chunking."""
    args = tiny_args(mixer)
    ckpt = make_checkpoint(tmp_path / "CKPT+x", ConformerEncoder(mixer, **args))
    folder = export_encoder(ckpt, tmp_path / "model")
    encoder = cpu_encoder(folder)
    seconds = 120
    t = torch.arange(seconds * 16000) / 16000
    wav = 0.1 * torch.sin(2 * torch.pi * 220 * t) + 0.01 * torch.randn(len(t))
    out = encoder.encode_batch(wav.unsqueeze(0))
    assert out.frames.tolist() == [seconds * 100 // 4 + 1]  # 12001 fbank frames
    assert all(h.shape == (1, out.frames[0], 32) for h in out.hidden_states)
    assert all(torch.isfinite(h).all() for h in out.hidden_states)


KERNEL_CALLS = []


def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False):
    """mamba_ssm's ``selective_scan_fn`` semantics (bias and softplus of the
    steps, SiLU(z) gate inside), computed by the sequential reference."""
    assert not return_last_state
    KERNEL_CALLS.append(u.shape)
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = lobes.nnet.mixers.mamba.selective_scan_ref(u, delta, A, B, C, D)
    return y * F.silu(z) if z is not None else y


def test_mamba_checkpoint_from_the_cuda_kernel_path_runs_on_cpu(tmp_path, monkeypatch):
    """Without a GPU: the kernel code path is run with a stand-in of the
    mamba-ssm kernel, with ``backend: cuda`` as a GPU run would use."""
    KERNEL_CALLS.clear()
    args = tiny_args("mamba", backend="cuda")
    cpu_keys = ConformerEncoder("mamba", **tiny_args("mamba", backend="torch")).state_dict().keys()

    monkeypatch.setattr(lobes.nnet.mixers.mamba, "_mamba_ssm_scan", lambda: fake_selective_scan_fn)
    monkeypatch.setattr(
        lobes.nnet.mixers.mamba.MambaBlock, "_use_cuda_kernel",
        lambda self, x: self.backend in ("auto", "cuda"),
    )
    gpu_encoder = ConformerEncoder("mamba", **args).eval()
    assert gpu_encoder.state_dict().keys() == cpu_keys
    ckpt = make_checkpoint(tmp_path / "CKPT+gpu", gpu_encoder)
    normalizer = FeatureNormalizer()
    normalizer.load(ckpt / "normalize.ckpt")
    normalizer.eval()
    wavs = torch.randn(2, 16000) * 0.1
    lens = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        feats = normalizer(Fbank(n_mels=80)(wavs), lens)
        _, kernel_hidden = gpu_encoder(feats, lens, return_hidden=True)
    assert len(KERNEL_CALLS) == 2  # forward and backward blocks, kernel path
    monkeypatch.undo()  # from here on: a CPU machine without mamba-ssm

    with pytest.raises(ImportError, match="mamba-ssm"):
        ConformerEncoder("mamba", **args)  # why encoder_from_checkpoint rewrites the backend
    folder = export_encoder(ckpt, tmp_path / "model")
    assert "backend: auto" in (folder / "hyperparams.yaml").read_text()
    out = cpu_encoder(folder).encode_batch(wavs, lens)
    for got, want in zip(out.hidden_states, kernel_hidden):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_model_folder_exported_by_40517be_still_loads(tmp_path):
    """A model folder exported before lobes/ was grouped by stage (its
    hyperparams.yaml names lobes.encoder and lobes.inference) loads and gives
    the outputs the code of that commit gave."""
    folder = REPO / "tests/data/model_40517be"
    assert "lobes.encoder.ConformerEncoder" in (folder / "hyperparams.yaml").read_text()
    expected = torch.load(REPO / "tests/data/model_40517be_expected.pt", weights_only=True)
    encoder = BestRQEncoder.from_hparams(source=str(folder), savedir=str(tmp_path))
    with torch.no_grad():
        out = encoder.encode_batch(expected["wav"], expected["wav_lens"])
    assert torch.equal(out.lengths, expected["lengths"])
    assert torch.allclose(torch.stack(out.hidden_states), expected["hidden_states"], atol=1e-6)
