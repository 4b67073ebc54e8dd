"""The MP3S VoxCeleb1 speaker-verification recipe: preparation, end to end on
the demo corpus, and a probe that learns."""

import csv
import re

import pytest
from conftest import PROBE_LAYERS, REPO, load_script, run_recipe

RECIPE = REPO / "recipes/VoxCeleb/SpeakerVerification"
voxceleb_prepare = load_script(RECIPE / "voxceleb_prepare.py", "voxceleb_prepare")
prepare_voxceleb = voxceleb_prepare.prepare_voxceleb
read_trials = voxceleb_prepare.read_trials

MIXERS = ["mhsa", "hypermixing", "fastformer", "summarymixing", "mamba"]
TINY_PROBE = [  # probe sizes for the demo (the YAMLs hold MP3S's)
    "--channels=[32, 32, 32, 32, 96]",
    "--emb_dim=32",
    "--batch_size=8",
    "--train_dataloader_opts={batch_size: 8, shuffle: True, num_workers: 0}",
    "--valid_dataloader_opts={batch_size: 8, num_workers: 0}",
    "--embed_dataloader_opts={batch_size: 8, num_workers: 0}",
]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probe_args(demo_data, pretrained, out, mixer="summarymixing", probe_yaml="ecapa",
               epochs=2, extra=()):
    """Command line of a demo-size probe run on ``pretrained``."""
    return [
        f"hparams/{probe_yaml}.yaml",
        f"--pretrained_path={pretrained / 'save'}",
        f"--data_folder={demo_data / 'VoxCeleb1'}",
        f"--output_folder={out}",
        f"--number_of_epochs={epochs}",
        "--out_n_neurons=8",
        *TINY_PROBE,
        *extra,
    ]


def probe(demo_data, pretrained, out, check=True, **kwargs):
    return run_recipe(RECIPE, probe_args(demo_data, pretrained, out, **kwargs), check=check)


def log_lines(out):
    return (out / "train_log.txt").read_text().splitlines()


def epoch_stats(line):
    """``{"train accuracy": "7.9e-01", "layer_weights": "0.25 0.25", ...}``
    of a train_log.txt line."""
    return dict(kv.split(": ", 1) for part in line.split(" - ") for kv in part.split(", "))


def test_prepare_demo_layout(demo_data, tmp_path):
    data = demo_data / "VoxCeleb1"
    prepare_voxceleb(data, tmp_path)
    trials = read_trials(data / "veri_test2.txt")
    test_speakers = {p.split("/")[0] for _, e, t in trials for p in (e, t)}
    train, dev = read_csv(tmp_path / "train.csv"), read_csv(tmp_path / "dev.csv")
    enrol, test = read_csv(tmp_path / "enrol.csv"), read_csv(tmp_path / "test.csv")
    assert list(train[0]) == ["ID", "duration", "wav", "spk_id"]
    train_speakers = {r["spk_id"] for r in train}
    # the trial speakers never appear in training; each training speaker in both splits
    assert len(train_speakers) == 8 and not train_speakers & test_speakers
    assert {r["spk_id"] for r in dev} == train_speakers
    assert not {r["ID"] for r in train} & {r["ID"] for r in dev}
    assert {r["ID"] + ".wav" for r in enrol} == {e for _, e, _ in trials}
    assert {r["ID"] + ".wav" for r in test} == {t for _, _, t in trials}
    assert all(2.0 <= float(r["duration"]) <= 4.0 for r in train + test)
    assert {label for label, _, _ in trials} == {0, 1}
    # same options: skipped (the CSVs are not rewritten)
    stamp = (tmp_path / "train.csv").stat().st_mtime_ns
    prepare_voxceleb(data, tmp_path)
    assert (tmp_path / "train.csv").stat().st_mtime_ns == stamp


def test_prepare_errors(demo_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no wav/ folder"):
        prepare_voxceleb(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="veri_test2.txt"):
        prepare_voxceleb(demo_data / "VoxCeleb1", tmp_path / "out",
                         verification_file=tmp_path / "veri_test2.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 id10001/abc/00001.wav id10002/def/00001.wav\n")
    with pytest.raises(FileNotFoundError, match="id10001/abc/00001.wav"):
        prepare_voxceleb(demo_data / "VoxCeleb1", tmp_path / "out", verification_file=bad)
    bad.write_text("yes id10001/abc/00001.wav id10002/def/00001.wav\n")
    with pytest.raises(ValueError, match="line 1"):
        read_trials(bad)


@pytest.mark.parametrize("seed", [1986, pytest.param(7, marks=pytest.mark.slow)])
def test_recipe_end_to_end_and_learns(demo_data, pretrained_demo, tmp_path, seed):
    """ECAPA probe on the pretrained demo encoder, 4 epochs: the speaker
    classifier is far above chance (8 speakers: 12.5%), the layer weights
    leave their uniform start, and EER and minDCF of the best checkpoint are
    printed and written."""
    out = tmp_path / "vox"
    proc = probe(demo_data, pretrained_demo("summarymixing"), out, epochs=4,
                 extra=[f"--seed={seed}"])
    epochs = [line for line in log_lines(out) if line.startswith("epoch:")]
    assert len(epochs) == 4
    last = epoch_stats(epochs[-1])
    assert float(last["train accuracy"]) > 0.5, epochs  # 4x chance
    weights = [float(w) for w in last["layer_weights"].split()]
    assert len(weights) == PROBE_LAYERS + 1
    assert abs(sum(weights) - 1.0) < 1e-3
    assert max(weights) - min(weights) > 0.005, weights

    assert re.search(r"EER: [\d.]+%, minDCF: [\d.]+", proc.stdout)
    result = (out / "verification.txt").read_text()
    eer = float(re.search(r"EER: ([\d.]+)%", result).group(1))
    assert 0.0 <= eer <= 100.0
    assert "test EER" in log_lines(out)[-1] and "test minDCF" in log_lines(out)[-1]
    trials = read_trials(demo_data / "VoxCeleb1/veri_test2.txt")
    assert len((out / "scores.txt").read_text().splitlines()) == len(trials)
    # besides the probe, only the layer weights are checkpointed (not the encoder)
    ckpt = next((out / "save").glob("CKPT+*"))
    assert (ckpt / "model.ckpt").exists()
    assert (ckpt / "weighted_ssl.ckpt").stat().st_size < 10_000


@pytest.mark.slow
@pytest.mark.parametrize("probe_yaml", ["ecapa", "xvector"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe_yaml):
    out = tmp_path / "vox"
    proc = probe(demo_data, pretrained_demo(mixer), out, mixer=mixer,
                 probe_yaml=probe_yaml, epochs=1)
    assert "EER:" in proc.stdout and (out / "verification.txt").exists()
