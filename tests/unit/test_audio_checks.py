"""Audio as users have it, in every recipe's data preparation and data
pipeline: other sample rates and stereo keep their real durations and
lengths (and VoxCeleb's crops their length), unreadable or truncated files
stop the preparation naming them, or are skipped and counted, and
utterances filtered by duration are counted in the log.

The recipes end to end on such data: test_fault_matrix.py (slow).
"""

import csv
import json
import logging

import pytest
import soundfile as sf
import speechbrain as sb
from conftest import REPO, load_script
from damage import (
    COMMONVOICE,
    RATES,
    copy_corpus,
    garble_file,
    resample_file,
    training_files,
    truncate_file,
)

from lobes.dataio.audio import BadAudioError, filter_by_duration, load_audio_crop
from lobes.dataio.librispeech_prepare import prepare_librispeech
from lobes.dataio.pretraining import dataio_prepare

RECIPES = {
    "librilight": REPO / "recipes/LibriLight/self-supervised-learning/BEST-RQ-linear",
    "asr": REPO / "recipes/LibriSpeech/ASR/MP3S",
    "voxceleb": REPO / "recipes/VoxCeleb/SpeakerVerification",
    "iemocap": REPO / "recipes/IEMOCAP/EmotionRecognition",
    "slurp": REPO / "recipes/SLURP/IntentClassification",
    "buckeye": REPO / "recipes/Buckeye/ASR/MP3S",
    "commonvoice": REPO / "recipes/CommonVoice/ASR/MP3S",
}
TASKS = ["librispeech", "librilight", "voxceleb", "iemocap", "slurp", "buckeye", "commonvoice"]


def script(task, name):
    return load_script(RECIPES[task] / name, f"{task}_{name[:-3]}_under_test")


def prepare(task, root, out, **kwargs):
    """Runs the real preparation of ``task``; returns the rows of its
    training manifest(s) as dicts (CSV rows, or JSON entries with ``wav``)."""
    if task == "librispeech":
        prepare_librispeech(root, out, tr_splits=["train-clean-100"], dev_splits=["dev-clean"],
                            te_splits=["test-clean"], **kwargs)
        manifest = out / "train-clean-100.csv"
    elif task == "librilight":
        script(task, "librilight_prepare.py").prepare_librilight(
            root, out, splits=["small"], max_segment_duration=20.0, **kwargs)
        manifest = out / "train.csv"
    elif task == "voxceleb":  # the training speakers' files, split train/dev
        script(task, "voxceleb_prepare.py").prepare_voxceleb(root, out, **kwargs)
        rows = []
        for name in ("train.csv", "dev.csv"):
            with open(out / name, newline="", encoding="utf-8") as fin:
                rows += list(csv.DictReader(fin))
        return rows
    elif task == "iemocap":
        script(task, "iemocap_prepare.py").prepare_iemocap(root, out, test_spk_id=1, **kwargs)
        entries = json.loads((out / "train.json").read_text())
        return [{"ID": k, **v} for k, v in entries.items()]
    elif task == "slurp":
        script(task, "slurp_prepare.py").prepare_slurp(root, out, **kwargs)
        manifest = out / "train.csv"
    elif task == "buckeye":  # segments of the tracks (extracted by training_files)
        script(task, "buckeye_prepare.py").prepare_buckeye(root, out, **kwargs)
        manifest = out / "train.csv"
    else:
        script(task, "common_voice_prepare.py").prepare_common_voice(
            root / COMMONVOICE, out, language="cy", **kwargs)
        manifest = out / "train.csv"
    with open(manifest, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


# ---------------------------------------------------------------------------
# Unreadable and truncated files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_bad_audio_stops_the_preparation_or_is_skipped_and_counted(
    demo_data, tmp_path, caplog, task
):
    """A truncated file with an intact header and a file that is not audio:
    the full decode (check_audio) names both and writes nothing; a header
    read only finds the second (this is why check_audio is on in the
    YAMLs); skip_bad_audio leaves both out, counted and listed."""
    root = copy_corpus(demo_data, task, tmp_path)
    files = training_files(task, root)
    truncated, garbled = files[1], files[2]
    truncate_file(truncated)
    garble_file(garbled)

    with pytest.raises(BadAudioError) as err:
        prepare(task, root, tmp_path / "checked", check_audio=True)
    message = str(err.value)
    assert f"Cannot read audio file {truncated} (" in message
    assert f"Cannot read audio file {garbled} (" in message
    assert "skip_bad_audio: True" in message
    reports = list((tmp_path / "checked").glob("bad_audio_*.txt"))
    assert len(reports) == 1 and str(reports[0]) in message
    assert {line.split("\t")[0] for line in reports[0].read_text().splitlines()} == {
        str(truncated), str(garbled)}
    assert not list((tmp_path / "checked").glob("*.csv"))

    with pytest.raises(BadAudioError) as err:  # headers only
        prepare(task, root, tmp_path / "headers", check_audio=False)
    assert str(garbled) in str(err.value) and str(truncated) not in str(err.value)

    with caplog.at_level(logging.WARNING):
        rows = prepare(task, root, tmp_path / "skipped", check_audio=True, skip_bad_audio=True)
    used = {r["wav"] for r in rows}
    assert str(truncated) not in used and str(garbled) not in used
    assert {str(f) for f in files} - {str(truncated), str(garbled)} <= used
    assert "skipped 2 of" in caplog.text
    report = next((tmp_path / "skipped").glob("bad_audio_*.txt"))
    assert str(report) in caplog.text and len(report.read_text().splitlines()) == 2


def test_a_corrupt_slurp_recording_is_named(demo_data, tmp_path):
    """(Was a bare LibsndfileError.)"""
    root = copy_corpus(demo_data, "slurp", tmp_path)
    corrupt = training_files("slurp", root)[5]
    corrupt.write_bytes(b"\x00" * 100)
    prep = script("slurp", "slurp_prepare.py")
    with pytest.raises(ValueError, match=rf"(?s)Cannot read audio file {corrupt} .*Re-download"):
        prep.prepare_slurp(root, tmp_path / "out", splits=["train"])


# ---------------------------------------------------------------------------
# Other sample rates and stereo
# ---------------------------------------------------------------------------
def recipe_datasets(task, out):
    """The training dataset(s) the recipe of ``task`` builds from the
    manifests in ``out`` (its own ``dataio_prepare``)."""
    if task in ("librispeech", "librilight"):
        csv_file = out / ("train-clean-100.csv" if task == "librispeech" else "train.csv")
        hparams = {"train_csv": csv_file, "valid_csv": csv_file, "avoid_if_shorter_than": 0.0,
                   "avoid_if_longer_than": 1000.0, "sample_rate": 16000,
                   "train_dataloader_opts": {}, "dynamic_batching": False}
        train, _, _ = dataio_prepare(hparams)
        asr = script("asr", "train.py").dataio_prepare if task == "librispeech" else None
        if asr is None:
            return [train]
        hparams.update(test_csv=[], sorting="random", save_folder=out, blank_index=0,
                       unk_label="<unk>")
        return [train, asr(hparams)[0]]
    if task == "voxceleb":
        hparams = {"save_folder": out, "sample_rate": 16000, "sentence_len": 3.0,
                   "out_n_neurons": 24, "random_chunk": True}
        return list(script(task, "train.py").dataio_prepare(hparams)[:2])
    if task == "iemocap":
        hparams = {"output_folder": out, "save_folder": out, "sample_rate": 16000,
                   "n_classes": 4}
        return [script(task, "train.py").dataio_prepare(hparams)[0]]
    if task in ("buckeye", "commonvoice"):  # the ASR probes (lobes.brains.ctc)
        # (str paths: SpeechBrain's SentencePiece concatenates them)
        hparams = {"train_csv": str(out / "train.csv"), "valid_csv": str(out / "dev.csv"),
                   "test_csv": [str(out / "test.csv")], "avoid_if_shorter_than": 0.0,
                   "avoid_if_longer_than": 1000.0, "sorting": "random",
                   "train_dataloader_opts": {}, "save_folder": str(out), "sample_rate": 16000,
                   "blank_index": 0, "unk_label": "<unk>", "output_neurons": 100,
                   "token_type": "bpe", "character_coverage": 1.0}
        return [script(task, "train.py").dataio_prepare(hparams)[0]]
    hparams = {"train_csv": out / "train.csv", "valid_csv": out / "devel.csv",
               "test_csv": out / "test.csv", "avoid_if_longer_than": 1000.0,
               "sorting": "random", "train_dataloader_opts": {}, "save_folder": out,
               "sample_rate": 16000, "tasks": ["scenario"]}
    return [script(task, "train.py").dataio_prepare(hparams)[0]["train"]]


@pytest.mark.parametrize("task", TASKS)
def test_other_sample_rates_and_stereo_keep_their_duration(demo_data, tmp_path, task):
    """8, 22.05, 44.1 and 48 kHz files and stereo files among the training
    files: the manifests hold their real durations and every recipe's
    pipeline gives 16 kHz mono signals of that duration (VoxCeleb: 3-s
    crops, the whole file when shorter; Buckeye: segments of the tracks at
    the same times as in the 16 kHz originals). Common Voice's clips stay
    MP3 (libsndfile writes MP3 at all these rates, mono and stereo)."""
    root = copy_corpus(demo_data, task, tmp_path)
    files = training_files(task, root)
    if task == "buckeye":  # the utterances cut from the original 16 kHz tracks
        reference = {r["ID"]: r for r in prepare(task, root, tmp_path / "reference")}
    changed = {}
    for i, rate in enumerate(RATES):
        changed[str(files[i])] = resample_file(files[i], rate, channels=1 + i % 2)
    if len(files) > len(RATES):  # (LibriLight's demo has 4 files: 2 stereo already)
        changed[str(files[len(RATES)])] = resample_file(files[len(RATES)], 16000, channels=2)
    out = tmp_path / "prepared"
    rows = prepare(task, root, out, check_audio=True)
    listed = {}
    for row in rows:
        seconds = float(row.get("duration", row.get("length")))
        if task == "buckeye":  # each segment: same start and length in seconds
            rate = sf.info(row["wav"]).samplerate
            ref = reference.pop(row["ID"])
            assert abs(int(row["start"]) / rate - int(ref["start"]) / 16000) < 1e-3, row
            assert seconds == pytest.approx(float(ref["duration"]), abs=2e-3), row
            continue
        if task == "voxceleb":  # one row per 3-s chunk, each with the utterance's duration
            listed[row["wav"]] = seconds
        else:
            listed[row["wav"]] = listed.get(row["wav"], 0.0) + seconds
    if task == "buckeye":
        assert not reference, f"utterances lost: {sorted(reference)}"
    for wav, seconds in changed.items():
        if task == "buckeye":  # checked per segment above
            continue
        if task == "librilight":  # segments: at most the file, minus silences
            assert 0.5 * seconds < listed[wav] <= seconds + 1e-3, (wav, listed[wav], seconds)
        else:
            assert listed[wav] == pytest.approx(seconds, abs=1e-3), wav

    for dataset in recipe_datasets(task, out):
        segments = task in ("librilight", "buckeye")
        keys = ["id", "wav", "sig"] + (["start", "stop"] if segments else [])
        sb.dataio.dataset.set_output_keys([dataset], keys)
        seen = set()
        for item in dataset:
            if item["wav"] not in changed:
                continue
            seen.add(item["wav"])
            sig = item["sig"]
            assert sig.dim() == 1, "not mono"
            if segments:
                rate = sf.info(item["wav"]).samplerate
                seconds = (int(item["stop"]) - int(item["start"])) / rate
            else:
                seconds = changed[item["wav"]]
            if task == "voxceleb":
                seconds = min(seconds, 3.0)
            assert abs(len(sig) - seconds * 16000) <= 2, (item["wav"], len(sig), seconds)
        assert seen == set(changed) or task == "voxceleb", seen  # dev split holds some


def test_voxceleb_crops_of_an_8khz_file_are_3_seconds(demo_data, tmp_path):
    """(Were 6-s crops placed as if the file were at 16 kHz, then "is empty"
    past its end.) A 12-s 8 kHz training file: every random crop and the
    centre crop are 3 s of its audio."""
    root = copy_corpus(demo_data, "voxceleb", tmp_path)
    wav = training_files("voxceleb", root)[0]
    assert resample_file(wav, 8000, seconds=12.0) == 12.0
    prepare("voxceleb", root, tmp_path / "out")
    train, dev = recipe_datasets("voxceleb", tmp_path / "out")
    data = train if any(train.data[i]["wav"] == str(wav) for i in train.data_ids) else dev
    index = [data.data[i]["wav"] for i in data.data_ids].index(str(wav))
    full = sf.read(str(wav), dtype="float32")[0]
    starts = set()
    for _ in range(40):
        sig = data[index]["sig"]
        assert sig.shape == (48000,)
        assert sig.abs().max() > 0.01
        starts.add(round(float(sig[:800].abs().sum()), 3))
    assert len(starts) > 1 or data is dev  # random positions (dev: centre)
    centre = load_audio_crop(str(wav), 3.0, 16000, "centre")
    assert centre.shape == (48000,) and len(full) == 96000


# ---------------------------------------------------------------------------
# Duration filters are counted
# ---------------------------------------------------------------------------
def test_duration_filters_are_counted_per_split(tmp_path, caplog):
    csv_file = tmp_path / "train.csv"
    with open(csv_file, "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["ID", "duration", "wav"])
        for i, seconds in enumerate([0.3, 0.5, 3.0, 4.0, 70.0]):
            (tmp_path / f"u{i}.flac").touch()  # manifests are checked: files exist
            writer.writerow([f"u{i}", seconds, tmp_path / f"u{i}.flac"])
    hparams = {"train_csv": csv_file, "valid_csv": csv_file, "avoid_if_shorter_than": 1.0,
               "avoid_if_longer_than": 60.0, "sample_rate": 16000,
               "train_dataloader_opts": {}, "dynamic_batching": False}
    with caplog.at_level(logging.INFO):
        train, valid, _ = dataio_prepare(hparams)
    assert len(train) == len(valid) == 2
    for split in ("train", "valid"):
        assert (f"{split} ({csv_file}): 2 of 5 utterances kept; 2 shorter than 1.0 s "
                "(avoid_if_shorter_than) and 1 longer than 60.0 s (avoid_if_longer_than) "
                "left out.") in caplog.text
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_file)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(filter_by_duration(data, "devel", max_duration=30.0)) == 4
    assert "devel: 4 of 5 utterances kept; 1 longer than 30.0 s" in caplog.text
