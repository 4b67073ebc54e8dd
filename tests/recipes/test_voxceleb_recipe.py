"""The MP3S VoxCeleb1 speaker-verification recipe: preparation, end to end on
the demo corpus, and a probe that learns."""

import csv
import re

import numpy as np
import pytest
import soundfile as sf
from conftest import (
    PAPER_MIXERS,
    PROBE_LAYERS,
    REPO,
    load_script,
    run_recipe,
    tiny_pretrained,
)

RECIPE = REPO / "recipes/VoxCeleb/SpeakerVerification"
voxceleb_prepare = load_script(RECIPE / "voxceleb_prepare.py", "voxceleb_prepare")
prepare_voxceleb = voxceleb_prepare.prepare_voxceleb
read_trials = voxceleb_prepare.read_trials

TINY_PROBE = [  # probe sizes for the demo (the YAMLs hold MP3S's)
    "--channels=[32, 32, 32, 32, 96]",
    "--emb_dim=32",
    "--batch_size=8",
    "--train_dataloader_opts={batch_size: 8, shuffle: True, num_workers: 0, drop_last: True}",
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
        "--out_n_neurons=24",
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
    assert list(train[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    train_speakers = {r["spk_id"] for r in train}
    # the trial speakers never appear in training; each training speaker in both splits
    assert len(train_speakers) == 24 and not train_speakers & test_speakers
    assert {r["spk_id"] for r in dev} == train_speakers
    assert not {r["wav"] for r in train} & {r["wav"] for r in dev}
    assert {r["ID"] + ".wav" for r in enrol} == {e for _, e, _ in trials}
    assert {r["ID"] + ".wav" for r in test} == {t for _, _, t in trials}
    assert all(4.0 <= float(r["duration"]) <= 7.0 for r in train + test)
    assert {label for label, _, _ in trials} == {0, 1}
    # same options: skipped (the CSVs are not rewritten)
    stamp = (tmp_path / "train.csv").stat().st_mtime_ns
    prepare_voxceleb(data, tmp_path)
    assert (tmp_path / "train.csv").stat().st_mtime_ns == stamp


def test_training_rows_are_mp3s_chunks(demo_data, tmp_path):
    """As MP3S's prepare_csv: one row per 3-s chunk, int(duration / 3)
    chunks per utterance from its start, so the row count is computed from
    the durations of the training and dev utterances (the demo's 4-7 s
    utterances give one or two chunks; its speech is never below the
    amplitude threshold)."""
    data = demo_data / "VoxCeleb1"
    prepare_voxceleb(data, tmp_path)
    trial_speakers = {p.split("/")[0] for _, e, t in read_trials(data / "veri_test2.txt")
                      for p in (e, t)}
    utterances = [p for p in sorted((data / "wav").rglob("*.wav"))
                  if p.relative_to(data / "wav").parts[0] not in trial_speakers]
    frames = {str(p): sf.info(str(p)).frames for p in utterances}
    expected = sum(n // (3 * 16000) for n in frames.values())
    rows = read_csv(tmp_path / "train.csv") + read_csv(tmp_path / "dev.csv")
    assert len(rows) == expected
    assert {1, 2} <= {n // 48000 for n in frames.values()}  # both cases occur
    by_file = {}
    for row in rows:
        by_file.setdefault(row["wav"], []).append((int(row["start"]), int(row["stop"])))
        # the duration is the utterance's (the random crop is drawn in it)
        assert round(float(row["duration"]) * 16000) == frames[row["wav"]]
        start_s, stop_s = row["ID"].rsplit("_", 2)[1:]
        assert (float(start_s), float(stop_s)) == (int(row["start"]) / 16000,
                                                   int(row["stop"]) / 16000)
    for wav, bounds in by_file.items():
        n = frames[wav] // 48000
        assert sorted(bounds) == [(48000 * i, 48000 * (i + 1)) for i in range(n)]
    # an utterance of 6 s or more is seen twice per epoch
    train = read_csv(tmp_path / "train.csv")
    assert len(train) > len({r["wav"] for r in train})


def test_amplitude_filter_and_chunkless_speaker(tmp_path):
    """A chunk of near silence is left out (MP3S's amp_th); a training
    speaker left without any chunk is refused with a message naming it."""
    rng = np.random.default_rng(0)
    wav_dir = tmp_path / "VoxCeleb1/wav"

    def write(rel, seconds, silent_from=None):
        sig = 0.1 * rng.standard_normal(int(seconds * 16000)).astype("float32")
        if silent_from is not None:
            sig[int(silent_from * 16000):] *= 1e-3  # mean |x| ~ 8e-5 < 5e-4
        (wav_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav_dir / rel), sig, 16000)

    for spk in ("id10001", "id10002"):
        for k in range(1, 4):
            write(f"{spk}/vid{spk[-1]}/{k:05d}.wav", 6.5, silent_from=3.0)
    for rel in ("id10009/t/00001.wav", "id10009/t/00002.wav"):
        write(rel, 4.0)
    (tmp_path / "VoxCeleb1/veri_test2.txt").write_text(
        "1 id10009/t/00001.wav id10009/t/00002.wav\n")
    out = tmp_path / "out"
    prepare_voxceleb(tmp_path / "VoxCeleb1", out, split_ratio=[2, 1])
    rows = read_csv(out / "train.csv") + read_csv(out / "dev.csv")
    assert len(rows) == 6 and all(r["start"] == "0" for r in rows)  # second chunks dropped
    prepare_voxceleb(tmp_path / "VoxCeleb1", out, split_ratio=[2, 1], amp_th=0.0)
    assert len(read_csv(out / "train.csv") + read_csv(out / "dev.csv")) == 12
    for k in range(1, 4):  # speaker id10002: all shorter than 3 s
        write(f"id10002/vid2/{k:05d}.wav", 2.5)
    with pytest.raises(ValueError, match=r"id10002 .*no 3.0-s chunk.*sentence_len"):
        prepare_voxceleb(tmp_path / "VoxCeleb1", tmp_path / "out2")


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


def load_hparams(probe_yaml, extra=""):
    """The recipe YAML with a tiny random encoder (nothing trained or read)."""
    import tempfile

    from lobes.recipe import load_hparams as load

    pretrained = tiny_pretrained(tempfile.mkdtemp())
    overrides = f"pretrained_path: {pretrained}\ndata_folder: x\nout_n_neurons: 16\n{extra}"
    return load(RECIPE / f"hparams/{probe_yaml}.yaml", overrides)[0]


def test_defaults_follow_mp3s():
    """ECAPA ends in a cosine classifier, the X-vector probe in MP3S's
    Xvector.Classifier (log-softmax into the AAM loss; ``classifier_head:
    cosine`` switches); both decay the probe's learning rate linearly
    1e-3 -> 1e-4 over the 15 epochs, never anneal the layer weights, crop
    training rows at random and score the last epoch."""
    from speechbrain.lobes.models import ECAPA_TDNN, Xvector
    from speechbrain.nnet.schedulers import LinearScheduler

    train = load_script(RECIPE / "train.py", "voxceleb_train")
    for probe_yaml, head in (("ecapa", ECAPA_TDNN.Classifier), ("xvector", Xvector.Classifier)):
        hparams = load_hparams(probe_yaml)
        train.add_classifier(hparams)
        assert type(hparams["modules"]["classifier"]) is head
        assert hparams["model"][-1] is hparams["modules"]["classifier"]  # trained, checkpointed
        schedule = hparams["lr_annealing_model"]
        assert isinstance(schedule, LinearScheduler)
        assert len(schedule.value_at_epoch) == hparams["number_of_epochs"] == 15
        assert schedule.value_at_epoch[0] == pytest.approx(1e-3)
        assert schedule.value_at_epoch[-1] == pytest.approx(1e-4)
        assert hparams["lr_annealing_weights"] is None
        assert hparams["test_checkpoint"] == "last" and hparams["random_chunk"] is True
        assert (hparams["sentence_len"], hparams["amp_th"]) == (3.0, 5e-4)
    hparams = load_hparams("xvector", "classifier_head: cosine")
    train.add_classifier(hparams)
    assert type(hparams["modules"]["classifier"]) is ECAPA_TDNN.Classifier
    with pytest.raises(ValueError, match="classifier_head: 'mp3s'.*: cosine"):
        train.add_classifier(load_hparams("ecapa", "classifier_head: mp3s"))


@pytest.mark.parametrize("seed", [1986, pytest.param(7, marks=pytest.mark.slow)])
def test_recipe_end_to_end_and_learns(demo_data, pretrained_demo, tmp_path, seed):
    """ECAPA probe on the pretrained demo encoder, 4 epochs: the speaker
    classifier is far above chance (24 speakers: 4%), the layer weights
    leave their uniform start, the probe's learning rate falls linearly from
    1e-3 to 1e-4 while the layer weights' stays at 0.01 (MP3S), and EER and
    minDCF of the last epoch's model are printed and written."""
    out = tmp_path / "vox"
    proc = probe(demo_data, pretrained_demo("summarymixing"), out, epochs=4,
                 extra=[f"--seed={seed}"])
    epochs = [line for line in log_lines(out) if line.startswith("epoch:")]
    assert len(epochs) == 4
    last = epoch_stats(epochs[-1])
    assert float(last["train accuracy"]) > 0.25, epochs  # 6x chance
    weights = [float(w) for w in last["layer_weights"].split()]
    assert len(weights) == PROBE_LAYERS + 1
    assert abs(sum(weights) - 1.0) < 1e-3
    assert max(weights) - min(weights) > 0.005, weights
    lrs = [float(epoch_stats(line)["lr_model"]) for line in epochs]
    assert lrs == pytest.approx([1e-3, 7e-4, 4e-4, 1e-4], rel=1e-3)
    assert {epoch_stats(line)["lr_weights"] for line in epochs} == {"1.00e-02"}
    assert log_lines(out)[-1].startswith("scored epoch (last): 4 - test EER")

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
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe_yaml):
    out = tmp_path / "vox"
    proc = probe(demo_data, pretrained_demo(mixer), out, mixer=mixer,
                 probe_yaml=probe_yaml, epochs=1)
    assert "EER:" in proc.stdout and (out / "verification.txt").exists()
