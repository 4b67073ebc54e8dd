"""Damaged copies of the demo corpora, as a user's real data may be.

Used by the audio-check tests (test_audio_checks.py) and the slow
fault-injection matrix (test_fault_matrix.py). Every helper rewrites one
file in place, in a *copy* of a demo corpus (``copy_corpus``), keeping its
name and container format (FLAC, WAV or MP3):

* ``resample_file``: another sample rate and/or channel count, same speech
  and duration (or stretched to ``seconds`` by repeating it);
* ``truncate_file``: the first half of the bytes: the header still announces
  every sample (the case that passed preparation and crashed training);
* ``garble_file``: not audio at all;
* ``trim_file``: the first ``seconds`` only (too-short utterances).

``training_files(task, root)`` lists the files each recipe trains on, in a
fixed order, so that tests damage files the training really reads.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

# The demo corpora's folder names (tools/demo_corpus.py)
CORPUS = {
    "librispeech": "LibriSpeech",
    "librilight": "LibriLight",
    "voxceleb": "VoxCeleb1",
    "iemocap": "IEMOCAP_full_release",
    "slurp": "SLURP",
    "buckeye": "Buckeye",
    "commonvoice": "CommonVoice",
}
# The Common Voice release and language the tests prepare
COMMONVOICE = "cv-corpus-11.0-2022-09-21/cy"
RATES = (8000, 22050, 44100, 48000)


def copy_corpus(demo_data, task, dest):
    """A private copy of the demo corpus of ``task``; returns its root."""
    root = Path(dest) / CORPUS[task]
    shutil.copytree(Path(demo_data) / CORPUS[task], root, symlinks=False)
    return root


def training_files(task, root):
    """The audio files the recipe of ``task`` trains on, sorted.

    LibriSpeech and LibriLight: their training split; VoxCeleb: the speakers
    outside the trial list; IEMOCAP: the labelled turns of sessions 2-5 (the
    training speakers of fold 1); SLURP: the recordings of ``train.jsonl``;
    Buckeye: the tracks of the training speakers (s01-s35), which this
    extracts from their zips into ``root``, where the preparation finds them;
    Common Voice: the Welsh clips of ``train.tsv`` whose sentence has the
    three words the preparation requires.
    """
    root = Path(root)
    if task == "librispeech":
        return sorted((root / "train-clean-100").rglob("*.flac"))
    if task == "librilight":
        return sorted((root / "small").rglob("*.flac"))
    if task == "voxceleb":
        trials = (root / "veri_test2.txt").read_text().split()
        test_speakers = {t.split("/")[0] for t in trials if t.endswith(".wav")}
        return sorted(
            p for p in (root / "wav").rglob("*.wav") if p.parts[-3] not in test_speakers
        )
    if task == "iemocap":  # the labelled turns (4 classes) of sessions 2-5
        from conftest import REPO, load_script

        prep = load_script(REPO / "recipes/IEMOCAP/EmotionRecognition/iemocap_prepare.py")
        turns = prep.collect_turns(root).values()
        return sorted(Path(wav) for wav, _, spk in turns if spk > 2)
    if task == "slurp":
        files = []
        for line in (root / "dataset/slurp/train.jsonl").read_text().splitlines():
            if line.strip():
                files += [r["file"] for r in json.loads(line)["recordings"]]
        return sorted(root / "audio/slurp_real" / f for f in files)
    if task == "buckeye":
        from conftest import REPO, load_script

        prep = load_script(REPO / "recipes/Buckeye/ASR/MP3S/buckeye_prepare.py")
        prep.extract_tracks(root, root)
        held_out = {*prep.DEV_SPEAKERS, *prep.TEST_SPEAKERS}
        return sorted(p for p in root.glob("s*.wav") if p.name[:3] not in held_out)
    if task == "commonvoice":
        from conftest import REPO, load_script

        prep = load_script(REPO / "recipes/CommonVoice/ASR/MP3S/common_voice_prepare.py")
        lines = (root / COMMONVOICE / "train.tsv").read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]
        return sorted(
            root / COMMONVOICE / "clips" / r["path"]
            for r in rows
            if prep.normalize_sentence(r["sentence"]) is not None
        )
    raise ValueError(f"unknown task {task!r}")


def _rewrite(path, sig, rate):
    """Writes ``sig`` (frames, channels) over ``path`` in its own format."""
    info = sf.info(str(path))
    subtype = "MPEG_LAYER_III" if info.format == "MP3" else "PCM_16"
    sf.write(str(path), sig, rate, format=info.format, subtype=subtype)


def resample_file(path, rate, channels=1, seconds=None):
    """Rewrites ``path`` at ``rate`` Hz with ``channels`` channels (the
    speech copied to each), repeated to ``seconds`` when given. Returns its
    duration in seconds."""
    sig, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = sig.mean(axis=1)
    if seconds is not None:
        mono = np.resize(mono, int(seconds * sr))
    out = torchaudio.functional.resample(torch.from_numpy(mono), sr, rate).numpy()
    # a little difference between channels: a real stereo file
    stereo = [out * (1.0 - 0.1 * c) for c in range(channels)]
    _rewrite(path, np.stack(stereo, axis=1), rate)
    return len(out) / rate


def trim_file(path, seconds):
    """Keeps the first ``seconds`` of ``path``."""
    sig, sr = sf.read(str(path), dtype="float32", always_2d=True)
    _rewrite(path, sig[: int(seconds * sr)], sr)


def truncate_file(path):
    """Cuts ``path`` to half its bytes: the header is intact and still
    announces all the samples, the second half of the audio is gone."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def garble_file(path):
    """Replaces ``path`` by bytes that are not audio."""
    Path(path).write_bytes(b"this is not audio " * 200)
