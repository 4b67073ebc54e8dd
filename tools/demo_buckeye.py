#!/usr/bin/env python3
"""A tiny Buckeye corpus of synthetic conversational speech, in the real
corpus's layout.

Made by ``make_buckeye_demo(out_root)`` (registered as ``"buckeye"`` in
``demo_corpus.TASKS``)::

    <out_root>/Buckeye/s01.zip  ->  s01/s0101a.zip  ->  s0101a.wav     16 kHz mono
                                                        s0101a.words   word alignments
                                                        s0101a.txt     the words said

as downloaded from https://buckeyecorpus.osu.edu/: one zip per speaker
holding one zip per track. (The real track zips also hold ``.phones`` and
``.log`` files, which MP3S does not read; the demo has none. Its ``.words``
entries repeat the word in the citation and phonetic fields.)

A track is an "interview": an espeak-ng American English voice (one per
speaker) says runs of words -- sentences of the demo grammar, sometimes
opened by ``well``, ``so``, ``um``... -- separated by what Buckeye marks as
non-speech: silences (``<SIL>``), breath-like noise (``<VOCNOISE>``), the
interviewer's questions in another, quieter voice (``<IVER>``) and ``uh``.
Some runs are one or two words (``yeah``, ``you know``); some are three
quick words followed by a short pause: the MP3S segmentation leaves both
out. The last run of a track is not closed by a break. The ``.words`` file
has the real format: header, ``#``, then ``<end time> 122 <word>; ...;
...; null`` per entry, with ``{B_TRANS}`` first and ``{E_TRANS}`` last;
word end times inside a run are spread over its speech in proportion to
the words' lengths (espeak-ng gives no word timings).

Speakers and split (MP3S's): training speakers s01-s04 (tracks ``a`` and
``b``, ~45 s each), validation s36-s37 and test s38-s40 (one ~35 s track
each): about 10 minutes of audio, ~10 s to make on 2 cores.

``<out_root>/Buckeye/.demo_segments.json`` (not part of the real layout)
lists, per track, the runs the generator said with their times and whether
MP3S's rules keep them, for the tests to check the preparation against.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from demo_corpus import SAMPLE_RATE, VARIANTS, _build, _pool_map, make_sentence, synthesize

TRAIN_SPEAKERS = ["s01", "s02", "s03", "s04"]
DEV_SPEAKERS = ["s36", "s37"]
TEST_SPEAKERS = ["s38", "s39", "s40"]
TRAIN_TRACK_S, OTHER_TRACK_S = 45.0, 35.0
MANIFEST = ".demo_segments.json"
MIN_DURATION, MIN_WORDS = 2.0, 3  # MP3S's rules, for the manifest
FILLERS = ["well", "so", "um", "like", "and", "i mean", "you know", "okay"]
SHORT_RUNS = ["yeah", "you know", "right", "oh yeah", "okay", "i see", "sure"]
QUICK_RUNS = ["i know that", "it was fine", "we did too", "that was it", "not at all"]
QUESTIONS = [
    "and then what happened", "how long did you live there", "really",
    "what do you think about that", "did you like it", "where was that",
    "how old were you then", "mhm", "and your family",
]
HEADER = (
    "signal {track}\ntype 0\ncolor 121\n"
    "comment | demo corpus (tools/demo_buckeye.py): synthetic speech, espeak-ng\n"
    "font -misc-*-bold-*-*-*-15-*-*-*-*-*-*-*\nseparator ;\nnfields 4\n#\n"
)
ZIP_DATE = (2000, 11, 30, 14, 13, 26)  # fixed: the same seed gives the same bytes


def _trim(samples, threshold=0.01):
    """The samples from the first to the last one above ``threshold``."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return samples[loud[0]: loud[-1] + 1] if len(loud) else samples


def _noise_burst(rng, seconds):
    """Breath-like noise (``<VOCNOISE>``): low-passed noise under a smooth envelope."""
    n = int(seconds * SAMPLE_RATE)
    noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(n)
    noise = np.convolve(noise, np.ones(8) / 8, mode="same")
    return (0.03 * noise * np.hanning(n)).astype(np.float32)


def _track(track, voice, interviewer, target_s, seed):
    """Audio, ``.words`` entries and runs of one track (deterministic)."""
    rng = random.Random(f"buckeye-{seed}-{track}")
    pieces, entries, runs = [], [], []
    now = 0.0

    def add(samples, word=None):
        nonlocal now
        pieces.append(samples)
        now += len(samples) / SAMPLE_RATE
        if word is not None:
            entries.append((now, word))

    def say(text, who, speed):
        return _trim(synthesize(text, who["voice"], speed, who["pitch"]))

    add(np.zeros(int(rng.uniform(0.05, 0.2) * SAMPLE_RATE), np.float32), "{B_TRANS}")
    add(np.zeros(int(rng.uniform(0.3, 0.8) * SAMPLE_RATE), np.float32), "<SIL>")
    while True:
        last = now >= target_s
        kind = rng.random()
        speed = voice["speed"] + rng.randint(-10, 10)
        if last or kind < 0.7:
            text = make_sentence(rng, rng.randint(4, 9))
            if rng.random() < 0.35:
                text = f"{rng.choice(FILLERS)} {text}"
        elif kind < 0.85:
            text = rng.choice(SHORT_RUNS)
        else:
            text, speed = rng.choice(QUICK_RUNS), 200
        words = text.split()
        speech = say(text, voice, speed)
        start, length = now, len(speech) / SAMPLE_RATE
        weights = np.cumsum([len(w) + 1 for w in words]) / sum(len(w) + 1 for w in words)
        pieces.append(speech)
        entries += [(start + length * float(f), w) for f, w in zip(weights, words)]
        now = start + length
        run = {"start": start, "end": now, "text": " ".join(words).upper()}
        runs.append(run)
        if last:  # not closed by a break: MP3S drops it
            run["kept"] = False
            add(np.zeros(int(0.3 * SAMPLE_RATE), np.float32), "{E_TRANS}")
            break
        if text in QUICK_RUNS:
            brk = "<SIL>"
        else:
            brk = rng.choices(["<SIL>", "<VOCNOISE>", "uh", "<IVER>"], [5, 1, 1, 2])[0]
        if brk == "<SIL>":
            seconds = rng.uniform(0.2, 0.4) if text in QUICK_RUNS else rng.uniform(0.25, 1.0)
            add(np.zeros(int(seconds * SAMPLE_RATE), np.float32), brk)
        elif brk == "<VOCNOISE>":
            add(_noise_burst(rng, rng.uniform(0.2, 0.45)), brk)
        elif brk == "uh":
            add(say("uh", voice, voice["speed"]), brk)
        else:
            add(np.zeros(int(0.15 * SAMPLE_RATE), np.float32), "<SIL>")
            add(0.3 * say(rng.choice(QUESTIONS), interviewer, interviewer["speed"]), brk)
        run["kept"] = len(words) >= MIN_WORDS and entries[-1][0] - start > MIN_DURATION
        if brk == "<IVER>":  # the <SIL> before it closed the run
            run["kept"] = len(words) >= MIN_WORDS and entries[-2][0] - start > MIN_DURATION
        if rng.random() < 0.3:
            add(np.zeros(int(rng.uniform(0.2, 0.6) * SAMPLE_RATE), np.float32), "<SIL>")
    return np.concatenate(pieces), entries, runs


def _words_file(track, entries):
    lines = [f"{end:12.6f}  122 {word}; {word}; {word}; null" for end, word in entries]
    return HEADER.format(track=track) + "\n".join(lines) + "\n"


def _zip_bytes(files):
    """A zip archive (bytes) of ``{name: bytes}``, with fixed dates."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, ZIP_DATE), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _voices(rng, n):
    """``n + 1`` American English voices: the speakers', then the interviewer's."""
    variants = sorted(VARIANTS)
    rng.shuffle(variants)
    return [
        {"voice": f"en-us+{v}", "speed": rng.randint(150, 185), "pitch": rng.randint(30, 70)}
        for v in variants[: n + 1]
    ]


def _buckeye(root, seed):
    rng = random.Random(f"buckeye-{seed}")
    speakers = TRAIN_SPEAKERS + DEV_SPEAKERS + TEST_SPEAKERS
    voices = _voices(rng, len(speakers))
    interviewer = voices[-1]
    jobs = []
    for spk, voice in zip(speakers, voices):
        tracks = ["a", "b"] if spk in TRAIN_SPEAKERS else ["a"]
        target = TRAIN_TRACK_S if spk in TRAIN_SPEAKERS else OTHER_TRACK_S
        jobs += [(spk, f"{spk}01{t}", voice, target) for t in tracks]

    def make(spk, track, voice, target):
        samples, entries, runs = _track(track, voice, interviewer, target, seed)
        wav = io.BytesIO()
        sf.write(wav, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        files = {
            f"{track}.wav": wav.getvalue(),
            f"{track}.words": _words_file(track, entries).encode(),
            f"{track}.txt": "".join(r["text"].lower() + "\n" for r in runs).encode(),
        }
        return spk, track, _zip_bytes(files), runs

    made = _pool_map(make, jobs)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for spk in speakers:
        tracks = {f"{spk}/{track}.zip": data for s, track, data, _ in made if s == spk}
        (root / f"{spk}.zip").write_bytes(_zip_bytes(tracks))
        manifest.update({track: runs for s, track, _, runs in made if s == spk})
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))


def make_buckeye_demo(out_root, seed=0):
    """Makes ``<out_root>/Buckeye`` (see the module docstring); returns it."""
    return _build(Path(out_root) / "Buckeye", seed, _buckeye)


if __name__ == "__main__":
    import sys

    print(make_buckeye_demo(sys.argv[1] if len(sys.argv) > 1 else "demo_data"))
