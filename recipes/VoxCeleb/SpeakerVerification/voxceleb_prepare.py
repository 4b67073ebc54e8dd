"""Data preparation for VoxCeleb1 speaker verification (MP3S protocol).

Reads the VoxCeleb1 layout (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/)::

    <data_folder>/wav/<speaker id>/<video id>/<NNNNN>.wav
    <verification_file>   (veri_test2.txt, the cleaned Vox1-O trial list)

where each trial line is ``<label> <enrol> <test>`` with paths relative to
``wav/`` and label 1 for a target trial (same speaker), and writes
SpeechBrain CSV manifests to ``save_folder`` (columns ``ID, duration, wav,
start, stop, spk_id``; ``duration`` is the whole utterance's, in seconds,
``start``/``stop`` in samples):

* ``train.csv`` and ``dev.csv``: the utterances of every speaker *not* in the
  trial list, split per speaker (``split_ratio``, e.g. 90/10, at least one
  training utterance each), written as MP3S writes them: **one row per
  ``seg_dur``-s chunk** (``int(duration / seg_dur)`` consecutive chunks from
  the start of the utterance), leaving out the chunks whose mean absolute
  amplitude is below ``amp_th``. An utterance of 7 s is two rows, so it is
  seen twice per epoch (``train.py`` crops each row at random inside the
  utterance, as MP3S does). Row IDs are ``<utterance>_<start s>_<stop s>``;
* ``enrol.csv`` and ``test.csv``: the distinct enrolment and test files of
  the trial list, one row per file, whose IDs are the trial paths without
  ``.wav`` (what ``train.py`` scores).

``wav`` holds absolute paths; ``duration`` is in seconds, at each file's own
sample rate. A preparation that already ran with the same options
(``<save_folder>/voxceleb_prepare.json``) is skipped.

With ``check_audio`` every file is decoded once, in parallel, so that a
truncated or corrupt file stops the preparation (naming it) instead of the
training; with ``skip_bad_audio`` such files are left out and counted
instead (``lobes.dataio.audio.scan_audio``; list in
``<save_folder>/bad_audio_voxceleb.txt``), and so are the trials that use
them.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
import os
import random
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.dataio.manifest import write_csv
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
OPTS_FILE = "voxceleb_prepare.json"
CSV_FILES = ("train.csv", "dev.csv", "enrol.csv", "test.csv")
HINT = (
    "Download VoxCeleb1 (dev and test wav archives) from "
    "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html, extract them "
    "into one folder holding wav/<speaker id>/<video id>/*.wav, and put the "
    "cleaned trial list veri_test2.txt "
    "(https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/veri_test2.txt) in "
    "it (or set verification_file)."
)


def read_trials(verification_file):
    """Parses a VoxCeleb trial list.

    Arguments
    ---------
    verification_file : str or Path
        Lines ``<label> <enrol path> <test path>``.

    Returns
    -------
    list of (int, str, str)
        (label, enrol path, test path), paths relative to ``wav/``.

    Example
    -------
    >>> import tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "veri_test2.txt")
    >>> _ = open(f, "w").write("1 id1/a/00001.wav id1/b/00002.wav\\n0 id1/a/00001.wav id2/c/00001.wav\\n")
    >>> read_trials(f)[1]
    (0, 'id1/a/00001.wav', 'id2/c/00001.wav')
    >>> _ = open(f, "w").write("1 id1/a/00001.wav\\n")
    >>> read_trials(f)
    Traceback (most recent call last):
    ...
    ValueError: ...line 1: ...expected '<label 0/1> <enrol wav> <test wav>'...
    """
    verification_file = Path(verification_file)
    if not verification_file.is_file():
        raise FileNotFoundError(
            f"Trial list {verification_file} does not exist. {HINT}"
        )
    trials = []
    with open(verification_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"{verification_file} line {n}: {line.strip()!r}: expected "
                    "'<label 0/1> <enrol wav> <test wav>' (veri_test2.txt format)."
                )
            trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"{verification_file} holds no trial.")
    return trials


def chunk_bounds(n_samples, sample_rate, seg_dur):
    """The chunks MP3S cuts an utterance into: ``int(duration / seg_dur)``
    consecutive ``seg_dur``-s chunks from its start (the remainder and an
    utterance shorter than ``seg_dur`` give none).

    Arguments
    ---------
    n_samples : int
        Length of the utterance.
    sample_rate : int
        Its sample rate.
    seg_dur : float
        Chunk duration in seconds.

    Returns
    -------
    list of (int, int)
        (start, stop) of each chunk, in samples.

    Example
    -------
    >>> chunk_bounds(7 * 16000, 16000, 3.0)
    [(0, 48000), (48000, 96000)]
    >>> chunk_bounds(47999, 16000, 3.0)
    []
    """
    n_chunks = int(n_samples / sample_rate / seg_dur)
    return [
        (int(i * seg_dur * sample_rate), int((i * seg_dur + seg_dur) * sample_rate))
        for i in range(n_chunks)
    ]


def prepare_voxceleb(
    data_folder,
    save_folder,
    verification_file=None,
    split_ratio=(90, 10),
    seg_dur=3.0,
    amp_th=5e-4,
    seed=1234,
    skip_prep=False,
    check_audio=False,
    skip_bad_audio=False,
    num_workers=16,
):
    """Writes ``train.csv``, ``dev.csv``, ``enrol.csv`` and ``test.csv``.

    Arguments
    ---------
    data_folder : str
        The VoxCeleb1 folder holding ``wav/``.
    save_folder : str
        Where the CSVs go.
    verification_file : str, optional
        The trial list; default ``<data_folder>/veri_test2.txt``.
    split_ratio : sequence of two numbers
        Train/dev share of each training speaker's utterances.
    seg_dur : float
        Duration (s) of the train/dev chunks (MP3S: 3, the crop length).
    amp_th : float
        Chunks whose mean absolute amplitude is below this are left out
        (MP3S: 5e-4; 0 keeps every chunk).
    seed : int
        Seed of the train/dev split.
    skip_prep : bool
        Do nothing.
    check_audio : bool
        Decode every file fully to find truncated or corrupt ones now rather
        than during training.
    skip_bad_audio : bool
        Leave unreadable/truncated files (and the trials using them) out,
        counted in the log, instead of stopping.
    num_workers : int
        Threads reading (or decoding) the audio files.

    Raises
    ------
    FileNotFoundError
        No ``wav`` folder, no trial list, or a trial file missing.
    ValueError
        A malformed trial list, no training speaker left, a training speaker
        without any chunk.
    lobes.dataio.audio.BadAudioError
        Unreadable (corrupt, truncated) audio files, all named, unless
        ``skip_bad_audio``.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_voxceleb import make_voxceleb_demo
    >>> data = make_voxceleb_demo("demo_data")
    >>> out = tempfile.mkdtemp()
    >>> prepare_voxceleb(data, out)
    >>> open(os.path.join(out, "train.csv")).readline().strip()
    'ID,duration,wav,start,stop,spk_id'
    """
    if skip_prep:
        logger.info("skip_prep: VoxCeleb preparation skipped.")
        return
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    wav_dir = data_folder / "wav"
    if not wav_dir.is_dir():
        raise FileNotFoundError(
            f"VoxCeleb data folder {data_folder} has no wav/ folder "
            f"({wav_dir} does not exist). {HINT}"
        )
    verification_file = Path(verification_file or data_folder / "veri_test2.txt")
    opts = {
        "data_folder": str(data_folder.resolve()),
        "verification_file": str(verification_file.resolve()),
        "split_ratio": list(split_ratio),
        "seg_dur": seg_dur,
        "amp_th": amp_th,
        "seed": seed,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    try:
        done = json.loads((save_folder / OPTS_FILE).read_text())
    except (OSError, ValueError):
        done = None
    if done == opts and all((save_folder / f).exists() for f in CSV_FILES):
        logger.info(f"VoxCeleb CSVs already in {save_folder}: skipping preparation.")
        return

    trials = read_trials(verification_file)
    test_files = sorted({p for _, e, t in trials for p in (e, t)})
    n_trials = len(trials)
    test_speakers = {p.split("/")[0] for p in test_files}
    for rel in test_files:
        if not (wav_dir / rel).is_file():
            raise FileNotFoundError(
                f"{verification_file} names {rel}, but {wav_dir / rel} does "
                f"not exist: is the VoxCeleb1 test set extracted? {HINT}"
            )

    by_speaker = {}
    for spk_dir in sorted(p for p in wav_dir.iterdir() if p.is_dir()):
        if spk_dir.name in test_speakers:
            continue
        wavs = sorted(str(p) for p in spk_dir.rglob("*.wav"))
        if wavs:
            by_speaker[spk_dir.name] = wavs
    infos = scan_audio(
        [w for wavs in by_speaker.values() for w in wavs]
        + [str(wav_dir / rel) for rel in test_files],
        check_audio, skip_bad_audio, num_workers,
        report_file=save_folder / "bad_audio_voxceleb.txt", what=f"VoxCeleb {wav_dir}",
    )
    by_speaker = {
        spk: [w for w in wavs if w in infos] for spk, wavs in by_speaker.items()
    }
    by_speaker = {spk: wavs for spk, wavs in by_speaker.items() if wavs}
    trials = [t for t in trials if all(str(wav_dir / p) in infos for p in t[1:])]
    if len(trials) < n_trials:
        logger.warning(
            f"{n_trials - len(trials)} of {n_trials} trials of {verification_file} "
            "left out: they use audio files that were skipped (skip_bad_audio)."
        )
    if not by_speaker:
        raise ValueError(
            f"No training speaker in {wav_dir}: every speaker folder is in the "
            f"trial list {verification_file} or has no usable .wav file. {HINT}"
        )
    if not trials:
        raise ValueError(f"No trial of {verification_file} is left: its files were skipped.")

    rng = random.Random(seed)
    train, dev = [], []
    for spk, wavs in by_speaker.items():
        wavs = list(wavs)
        rng.shuffle(wavs)
        n_dev = round(len(wavs) * split_ratio[1] / sum(split_ratio))
        n_dev = min(max(n_dev, 1 if len(wavs) > 1 else 0), len(wavs) - 1)
        dev += [(w, spk) for w in wavs[:n_dev]]
        train += [(w, spk) for w in wavs[n_dev:]]

    train_rows = _chunk_rows(train, wav_dir, seg_dur, amp_th)
    dev_rows = _chunk_rows(dev, wav_dir, seg_dur, amp_th)
    chunkless = sorted(set(by_speaker) - {row[-1] for row in train_rows})
    if chunkless:
        raise ValueError(
            f"Training speaker(s) {', '.join(chunkless)} in {wav_dir} have no "
            f"{seg_dur}-s chunk above the amplitude threshold {amp_th} in "
            "their training utterances (all shorter than sentence_len, or "
            "silent): lower sentence_len or amp_th in the YAML, or remove "
            "these speakers."
        )
    save_folder.mkdir(parents=True, exist_ok=True)
    _write_csv(save_folder / "train.csv", train_rows)
    _write_csv(save_folder / "dev.csv", dev_rows)
    enrol = sorted({e for _, e, _ in trials})
    test = sorted({t for _, _, t in trials})
    for name, files in (("enrol.csv", enrol), ("test.csv", test)):
        items = [(str(wav_dir / rel), rel.split("/")[0]) for rel in files]
        _write_csv(save_folder / name, _whole_rows(items, wav_dir, infos))
    write_text_atomic(save_folder / OPTS_FILE, json.dumps(opts, indent=1))
    logger.info(
        f"VoxCeleb: {len(by_speaker)} training speakers ({len(train)} train / "
        f"{len(dev)} dev utterances in {len(train_rows)} / {len(dev_rows)} "
        f"{seg_dur}-s chunks), {len(test_speakers)} test speakers, "
        f"{len(trials)} trials ({len(enrol)} enrol, {len(test)} test files)."
    )


def _utt_id(path, wav_dir):
    """Path under ``wav/`` without ``.wav``: ``id10270/x6uYqmx31kE/00001``."""
    return os.path.relpath(path, wav_dir)[: -len(".wav")].replace(os.sep, "/")


def _read_error(path, err):
    return ValueError(
        f"Cannot read audio file {path} ({err}): corrupt or truncated; "
        "re-extract it or delete it."
    )


def _chunk_rows(items, wav_dir, seg_dur, amp_th):
    """CSV rows of the chunks of ``items`` [(path, speaker)] (MP3S's
    ``prepare_csv``): ``[ID, duration, wav, start, stop, spk_id]``."""
    rows = []
    for path, spk in items:
        try:
            signal, sample_rate = sf.read(path, dtype="float32", always_2d=True)
            if signal.shape[0] == 0:
                raise RuntimeError("no audio frames")
        except Exception as err:
            raise _read_error(path, err) from err
        signal = signal.mean(axis=1)
        duration = signal.shape[0] / sample_rate
        utt = _utt_id(path, wav_dir)
        for start, stop in chunk_bounds(signal.shape[0], sample_rate, seg_dur):
            if abs(signal[start:stop]).mean() < amp_th:
                continue
            chunk_id = f"{utt}_{start / sample_rate}_{stop / sample_rate}"
            rows.append([chunk_id, duration, os.path.abspath(path), start, stop, spk])
    return rows


def _whole_rows(items, wav_dir, infos):
    """CSV rows of whole utterances ``items`` [(path, speaker)]; ``infos``:
    the ``scan_audio`` result (frames at the file's own rate)."""
    rows = []
    for path, spk in items:
        info = infos[path]
        rows.append([
            _utt_id(path, wav_dir), round(info.duration, 5),
            os.path.abspath(path), 0, info.frames, spk,
        ])
    return rows


def _write_csv(path, rows):
    """Writes a CSV atomically (a full disk leaves none, with one message)."""
    write_csv(path, HEADER, rows)
