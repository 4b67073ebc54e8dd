#!/usr/bin/env python3
"""Small demo corpora of synthetic speech in the real datasets' layouts.

Real corpora cannot be downloaded everywhere (CI has no internet), so every
recipe can also run end to end on a few minutes of speech that the project
generates itself: English sentences spoken by the ``espeak-ng`` synthesiser
(Debian package ``espeak-ng``) with many voices, speeds and pitches, resampled
to 16 kHz and written as FLAC in exactly the folder layout, file naming and
metadata format of the real dataset. The recipes' *real* preparation scripts
then read them as they would read the real data.

    python tools/demo_corpus.py --out demo_data [--tasks librispeech,librilight]

Generation is deterministic for a seed and idempotent: a finished corpus has a
``.demo_complete`` marker and is not generated again.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import io
import json
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
VERSION = "1"
# espeak-ng's own English voices (no MBROLA needed), with voice variants.
BASE_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "f1", "m3", "f2", "m2", "f3", "m4", "f4", "m5", "f5", "m6", "m7"]

SUBJECTS = ["the old sailor", "a young doctor", "my neighbour", "the tired farmer", "her brother", "the small child", "our teacher", "the quiet painter", "a clever student", "the king", "his mother", "the baker"]
VERBS = ["found", "carried", "painted", "opened", "watched", "remembered", "followed", "wanted", "cleaned", "described", "counted", "borrowed"]
OBJECTS = ["a golden key", "the heavy door", "seven green apples", "the long letter", "a broken clock", "the river boat", "an empty basket", "the winter coat", "a silver spoon", "the wooden table", "three yellow birds", "the morning paper"]
PLACES = ["near the harbour", "in the garden", "before dinner", "under the bridge", "after the storm", "by the window", "at the market", "in the quiet forest", "on the hill", "during the night", "beside the fire", "along the road"]
ENDINGS = ["and smiled", "without a word", "and then went home", "while the bells were ringing", "because it was raining", "and nobody noticed", "as the sun went down", "with great care"]


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


def synthesize(text, voice="en", speed=160, pitch=50, amplitude=100):
    """Speaks ``text`` with espeak-ng; returns float32 samples at 16 kHz.

    Arguments
    ---------
    text : str
        What to say.
    voice : str
        An espeak-ng voice, optionally with a variant (``en-us+f2``).
    speed : int
        Words per minute.
    pitch : int
        0-99.
    amplitude : int
        0-200.

    Returns
    -------
    numpy.ndarray
        Mono samples at 16 kHz.
    """
    if shutil.which("espeak-ng") is None:
        raise SynthesisError(
            "The demo corpus is spoken by espeak-ng, which is not installed: "
            "run `apt-get install espeak-ng` (or `bash tools/setup_env.sh` as root)."
        )
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise SynthesisError(f"espeak-ng failed for voice {voice}: {proc.stderr.decode()[:300]}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    wav = torchaudio.functional.resample(torch.from_numpy(wav), sr, SAMPLE_RATE)
    return wav.numpy()


def make_sentence(rng):
    """A random English sentence (6-20 words) from the built-in templates."""
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
    if rng.random() < 0.6:
        words.append(rng.choice(ENDINGS))
    if rng.random() < 0.4:
        words += ["and", rng.choice(VERBS), rng.choice(OBJECTS)]
    return " ".join(words)


def speakers(rng, n):
    """``n`` distinct (voice, speed, pitch) triples, one per speaker."""
    combos = [f"{b}+{v}" for v in VARIANTS for b in BASE_VOICES]
    rng.shuffle(combos)
    return [(combos[i], rng.randint(145, 185), rng.randint(30, 70)) for i in range(n)]


def is_complete(root):
    """Whether the demo corpus at ``root`` was fully generated (this version)."""
    marker = Path(root) / ".demo_complete"
    return marker.exists() and marker.read_text().strip() == VERSION


def mark_complete(root):
    """Marks the demo corpus at ``root`` as fully generated."""
    (Path(root) / ".demo_complete").write_text(VERSION)


def _write(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, format="FLAC")


def _pool_map(fn, jobs):
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))


def make_librispeech_demo(out_root, seed=0):
    """LibriSpeech layout: <split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    with <spk>-<chapter>.trans.txt, and SPEAKERS.TXT.

    Splits: train-clean-100 (8 speakers x 2 chapters x 8 utterances),
    dev-clean, test-clean and test-other (3 new speakers each, 1 chapter x 6).
    """
    root = Path(out_root) / "LibriSpeech"
    if is_complete(root):
        return root
    rng = random.Random(seed)
    voices = speakers(rng, 17)
    splits = {"train-clean-100": (voices[:8], 2, 8), "dev-clean": (voices[8:11], 1, 6),
              "test-clean": (voices[11:14], 1, 6), "test-other": (voices[14:17], 1, 6)}
    jobs, speaker_lines, spk_id = [], [], 100
    for split, (split_voices, n_chapters, n_utts) in splits.items():
        for voice, speed, pitch in split_voices:
            spk_id += 11
            speaker_lines.append(f"{spk_id:<5}| {'F' if '+f' in voice else 'M'} | {split:<16} | 1.00 | demo {voice}")
            for c in range(n_chapters):
                chapter = 1000 + spk_id * 3 + c
                folder = root / split / str(spk_id) / str(chapter)
                lines = []
                for u in range(n_utts):
                    utt = f"{spk_id}-{chapter}-{u:04d}"
                    text = make_sentence(rng)
                    lines.append(f"{utt} {text.upper()}")
                    jobs.append((folder / f"{utt}.flac", text, voice, speed + rng.randint(-8, 8), pitch))
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{spk_id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    _pool_map(lambda path, text, voice, speed, pitch: _write(path, synthesize(text, voice, speed, pitch)), jobs)
    header = "; Demo corpus: synthetic speech (espeak-ng)\n;ID  |SEX| SUBSET           |MINUTES| NAME\n"
    (root / "SPEAKERS.TXT").write_text(header + "\n".join(speaker_lines) + "\n")
    mark_complete(root)
    return root


def make_librilight_demo(out_root, seed=0):
    """LibriLight layout: small/<speaker>/<book>/<file>.flac with a sibling
    <file>.json holding ``speaker``, ``book_meta``, ``snr`` and
    ``voice_activity`` ([[start_s, end_s], ...]), as in libri-light's release.

    Four long files (40-90 s) of sentences separated by 0.3-1.5 s silences.
    """
    root = Path(out_root) / "LibriLight"
    if is_complete(root):
        return root
    rng = random.Random(seed + 1)
    voices = speakers(rng, 4)
    files = []
    for i, (voice, speed, pitch) in enumerate(voices):
        spk = str(2000 + 37 * i)
        book = f"demo_book_{i:02d}_librivox_64kb_mp3"
        target = rng.uniform(40, 90)
        sentences, total = [], 0.0
        while total < target:
            sentences.append(make_sentence(rng))
            total += 3.5
        files.append((spk, book, voice, speed, pitch, sentences))

    def render(spk, book, voice, speed, pitch, sentences):
        pieces, vad, t = [], [], 0.0
        for text in sentences:
            gap = np.zeros(int(rng_gap(text) * SAMPLE_RATE), dtype=np.float32)
            speech = synthesize(text, voice, speed, pitch)
            pieces += [gap, speech]
            t += len(gap) / SAMPLE_RATE
            vad.append([round(t, 3), round(t + len(speech) / SAMPLE_RATE, 3)])
            t += len(speech) / SAMPLE_RATE
        pieces.append(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))
        stem = root / "small" / spk / book / f"{book[:14]}_{spk}"
        _write(stem.with_suffix(".flac"), np.concatenate(pieces))
        meta = {"speaker": spk, "book_meta": {"title": book, "id": book[:14]},
                "snr": 30.0, "voice_activity": vad}
        stem.with_suffix(".json").write_text(json.dumps(meta))

    def rng_gap(text):  # deterministic silence length per sentence
        return 0.3 + (sum(map(ord, text)) % 1200) / 1000

    _pool_map(render, files)
    mark_complete(root)
    return root


TASKS = {"librispeech": make_librispeech_demo, "librilight": make_librilight_demo}


def make_demo_corpus(out_dir, tasks=tuple(TASKS), seed=0):
    """Generates the demo corpora ``tasks`` under ``out_dir``.

    Returns
    -------
    dict
        Task name -> root folder of its corpus.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"Unknown demo corpus {sorted(unknown)}: choose from {sorted(TASKS)}")
    return {task: TASKS[task](out_dir, seed=seed) for task in tasks}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data", help="output folder")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: " + ",".join(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for task, root in make_demo_corpus(args.out, args.tasks.split(","), args.seed).items():
        n = sum(sf.info(str(p)).duration for p in Path(root).rglob("*.flac"))
        print(f"[demo corpus] {task}: {root} ({n / 60:.1f} min of audio)")
