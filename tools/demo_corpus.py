#!/usr/bin/env python3
"""Small demo corpora of synthetic speech in the real datasets' layouts.

The real corpora (LibriSpeech, 1000 h; LibriLight, 60k h) cannot be
downloaded everywhere (CI has no internet), so every recipe can also run end
to end on a few minutes of speech that the project generates itself: English
sentences spoken by the ``espeak-ng`` synthesiser (Debian/Ubuntu package
``espeak-ng``) with many voices, accents, speeds and pitches (one voice = one
speaker), resampled to 16 kHz mono and written as FLAC in exactly the folder
layout, file naming and metadata format of the real dataset. The recipes'
*real* preparation scripts (``librispeech_prepare.py``,
``librilight_prepare.py``) then read them as they would read the real data.

Usage::

    python tools/demo_corpus.py --out demo_data [--tasks librispeech,librilight] [--seed 0]

or, from Python, ``make_demo_corpus("demo_data")``.

What is made (seed 0: about 34 min of LibriSpeech, 4 min of LibriLight):

* ``<out>/LibriSpeech/``: ``SPEAKERS.TXT`` (the real file's format) and
  ``<split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac`` with one
  ``<speaker>-<chapter>.trans.txt`` per chapter (lines ``<utt_id> <TEXT>``,
  upper case, no punctuation but apostrophes). Splits: ``train-clean-100``
  (8 speakers x 2 chapters x 8 utterances of 2-6 s, the ASR probes'
  training set), ``train-clean-360`` (20 more speakers, the same amount
  each: with train-clean-100, the ~30 min that the demo pretrains on),
  ``dev-clean`` and ``test-other`` (3 other speakers each, 5 utterances of
  2-8 s per speaker), ``test-clean`` (4 speakers, 8 utterances each).
  Speakers never span splits.
* ``<out>/LibriLight/small/<speaker>/<book_dir>/<file>.flac`` with a sibling
  ``<file>.json`` (``speaker``, ``book_meta``, ``snr``, ``voice_activity`` =
  ``[[start_s, end_s], ...]``) as in facebookresearch/libri-light: 4 long
  files (40-90 s) of sentences separated by 0.3-1.5 s of silence, whose
  voice activity is the known span of each sentence.

and, for the MP3S probes, the corpora of the ``demo_<dataset>.py`` modules
(task names ``voxceleb``, ``iemocap``, ``slurp``, ``buckeye``,
``commonvoice``; each module's docstring describes its layout), and
Libri-light's limited-resource fine-tuning set ``librispeech_finetuning``
(utterances of the demo LibriSpeech in that archive's layout,
``demo_librispeech_finetuning.py``).

Generation is deterministic for a seed (texts, voices, durations, samples),
takes ~15 s on 2 cores, and is idempotent: a finished corpus holds a
``.demo_complete`` marker (format version and seed) and is not made again.
A corpus is built in a temporary sibling folder and renamed into place when
complete, so an interrupted run never leaves a half corpus behind.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import importlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
VERSION = "3"
MARKER = ".demo_complete"
REPO = Path(__file__).resolve().parents[1]

# espeak-ng's own English voices (no MBROLA needed): accents ...
ACCENTS = [
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029",
    "en-gb-x-gbclan", "en-us-nyc", "en-gb-x-gbcwmd",
]
# ... and voice variants (files in espeak-ng-data/voices/!v), with their sex.
VARIANTS = {
    "m1": "M", "m2": "M", "m3": "M", "m4": "M", "m5": "M", "m6": "M",
    "m7": "M", "f1": "F", "f2": "F", "f3": "F", "f4": "F", "f5": "F",
    "Andy": "M", "Annie": "F", "Andrea": "F", "Alicia": "F", "linda": "F",
    "steph": "F", "belinda": "F", "adam": "M", "david": "M", "edward": "M",
    "john": "M", "paul": "M", "robert": "M", "victor": "M", "michel": "M",
}

# ---------------------------------------------------------------------------
# A small English grammar over a few hundred words.
# ---------------------------------------------------------------------------
NOUNS = """
apple basket bell bird boat book bottle box basin bridge brother candle
captain carpet castle cat chair child church clock cloud coat cottage cup
daughter desk doctor dog door dragon drum farmer feather field fire fish flag
flower forest fox garden gate ghost girl glove goat hammer harbour hat hill
horse house island jacket judge kettle key king kitchen knife ladder lake
lamp lantern letter lion map market merchant miller mirror monkey moon
mountain mouse needle nest ocean orchard owl painter palace parrot pencil
picture pillow pirate plate pocket poet potato prince princess queen rabbit
river road robin rope sailor scarf shadow sheep shell ship shoe shop singer
sister soldier spoon star stone storm stranger street student sword table
tailor teacher tent tiger tower town train tree trumpet tunnel uncle valley
village violin wagon wall watch well whale wheel widow window wizard wolf
""".split()
ADJECTIVES = """
ancient angry big black blue brave bright broken busy calm careful cheerful
clever cold crooked curious dark deep dusty eager empty enormous famous
fierce foolish friendly gentle golden green grey happy heavy hidden hollow
honest hungry kind large lazy little lonely loud lucky merry narrow noisy
old pale patient polite poor proud purple quiet rapid red rich rough round
rusty sad shiny short silent silver sleepy slow small smooth soft splendid
steep strange strong sudden sweet tall tiny tired warm weary wet white wild
wise wooden yellow young
""".split()
VERBS_PAST = """
admired borrowed buried carried chased cleaned counted covered described
dropped dragged examined filled fixed followed found guarded held hid lifted
lost mended moved noticed opened painted pulled pushed raised reached
remembered repaired returned saved searched showed sold stole touched
visited wanted washed watched weighed wrapped
""".split()
VERBS_BASE = """
believe carry climb cross follow forget hear keep leave lift mend move open
reach remember repair save see sell touch visit want wash watch
""".split()
VERBS_INTRANS = """
arrived danced departed disappeared laughed listened paused rested shouted
slept smiled sang trembled waited wandered whistled wept worked
""".split()
ADVERBS = """
bravely briefly calmly carefully cheerfully eagerly gently gladly happily
honestly loudly nervously patiently politely proudly quickly quietly rarely
sadly slowly softly suddenly wisely
""".split()
NAMES = """
anna arthur bella charles clara daniel edith emily frank george grace harry
helen henry james jane john lucy margaret martha mary oliver peter robert
rose samuel sarah thomas walter william
""".split()
PREPOSITIONS = """
above across against along behind beneath beside beyond inside near
through toward under upon within
""".split()
TIMES = [
    "in the morning", "at midnight", "after supper", "before dawn",
    "last winter", "every evening", "on sunday", "during the storm",
    "in the spring", "at noon", "the next day", "long ago",
    "that autumn", "before the war", "at twilight", "early one summer",
]
CONJUNCTIONS = ["and", "but", "because", "while", "so", "although", "until", "when"]
PRONOUNS = ["he", "she", "they", "we", "i", "you"]
NEGATIONS = ["didn't", "couldn't", "wouldn't", "won't", "can't", "shouldn't"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]


def vocabulary():
    """The set of distinct words the sentences are drawn from."""
    words = set()
    for group in (NOUNS, ADJECTIVES, VERBS_PAST, VERBS_BASE, VERBS_INTRANS, ADVERBS,
                  NAMES, PREPOSITIONS, CONJUNCTIONS, PRONOUNS, NEGATIONS, NUMBERS):
        words.update(group)
    for phrase in TIMES:
        words.update(phrase.split())
    words.update(["the", "a", "an", "of", "was", "were", "there", "with", "had"])
    return words


IRREGULAR_PLURALS = {
    "child": "children", "mouse": "mice", "sheep": "sheep", "fish": "fish",
    "knife": "knives", "wolf": "wolves", "shelf": "shelves", "potato": "potatoes",
}


def plural(noun):
    """English plural of one of the built-in nouns."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _noun_phrase(rng, names=True):
    kind = rng.random()
    if names and kind < 0.15:
        return [rng.choice(NAMES)]
    if names and kind < 0.25:
        return [rng.choice(NAMES) + "'s", rng.choice(NOUNS)]
    if kind < 0.33:
        return [rng.choice(NUMBERS), rng.choice(ADJECTIVES), plural(rng.choice(NOUNS))]
    det = rng.choice(["the", "the", "a", "his", "her", "their", "my", "our"])
    words = [det]
    if rng.random() < 0.6:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(NOUNS))
    if det == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _clause(rng):
    kind = rng.random()
    if kind < 0.5:
        return _noun_phrase(rng) + [rng.choice(VERBS_PAST)] + _noun_phrase(rng)
    if kind < 0.7:
        return _noun_phrase(rng) + [rng.choice(VERBS_INTRANS)]
    if kind < 0.85:
        return [rng.choice(PRONOUNS), rng.choice(NEGATIONS), rng.choice(VERBS_BASE)] + _noun_phrase(rng)
    subject = _noun_phrase(rng, names=False)
    verb = "were" if subject[0] in NUMBERS else "was"
    return ["there", verb] + subject + [rng.choice(PREPOSITIONS)] + _noun_phrase(rng)


def _extension(rng):
    kind = rng.random()
    if kind < 0.35:
        return [rng.choice(PREPOSITIONS)] + _noun_phrase(rng)
    if kind < 0.55:
        return [rng.choice(ADVERBS)]
    if kind < 0.75:
        return rng.choice(TIMES).split()
    return [rng.choice(CONJUNCTIONS)] + _clause(rng)


def make_sentence(rng, n_words):
    """An English sentence of about ``n_words`` (at least ``n_words``) words,
    lower case, from the built-in grammar (``rng``: a ``random.Random``)."""
    words = _clause(rng)
    while len(words) < n_words:
        words += _extension(rng)
    return " ".join(words)


# ---------------------------------------------------------------------------
# Speech synthesis
# ---------------------------------------------------------------------------
class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


def check_espeak():
    """Raises :class:`SynthesisError` with the fix when espeak-ng is missing."""
    if shutil.which("espeak-ng") is None:
        raise SynthesisError(
            "The demo corpus is spoken by the espeak-ng synthesiser, which is "
            "not installed (no `espeak-ng` on PATH). Install it with "
            "`sudo apt-get install espeak-ng` (Debian/Ubuntu; `bash "
            "tools/setup_env.sh` as root does it too), then run again."
        )


def synthesize(text, voice="en", speed=160, pitch=50, sample_rate=SAMPLE_RATE):
    """Speaks ``text`` with espeak-ng; returns float32 mono samples at
    ``sample_rate`` (16 kHz by default).

    Arguments
    ---------
    text : str
        What to say.
    voice : str
        An espeak-ng voice, optionally with a variant (``en-us+f2``).
    speed : int
        Words per minute (80-450).
    pitch : int
        0-99.
    sample_rate : int
        Rate of the returned samples (espeak-ng speaks at 22.05 kHz).

    Returns
    -------
    numpy.ndarray
        Mono samples at ``sample_rate``.
    """
    check_espeak()
    with tempfile.TemporaryDirectory(prefix="espeak_") as tmp:
        wav_path = os.path.join(tmp, "out.wav")
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav_path, text]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0 or not os.path.exists(wav_path):
            raise SynthesisError(
                f"espeak-ng failed (exit {proc.returncode}) for voice {voice!r}: "
                f"{proc.stderr.decode(errors='replace')[:300]}"
            )
        wav, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1)))
    if sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav.numpy().astype(np.float32)


def speak_in_range(key, voice, speed, pitch, min_s, max_s, max_tries=30):
    """Synthesises a fresh sentence whose audio lasts ``min_s``-``max_s`` s.

    The sentence is drawn from ``random.Random(key)``, so the result depends
    only on ``key`` (not on thread scheduling). Returns ``(text, samples)``.
    """
    rng = random.Random(key)
    target = rng.uniform(min_s, max_s)
    n_words = max(3, round(target * speed / 60 * 0.9))
    best = None
    for _ in range(max_tries):
        text = make_sentence(rng, n_words)
        samples = synthesize(text, voice, speed, pitch)
        duration = len(samples) / SAMPLE_RATE
        if min_s <= duration <= max_s:
            return text, samples
        best = (text, samples)
        n_words = max(3, n_words + (2 if duration < min_s else -3))
    raise SynthesisError(
        f"could not synthesise a {min_s}-{max_s} s sentence with {voice}: last was "
        f"{len(best[1]) / SAMPLE_RATE:.2f} s"
    )


def speakers(rng, n):
    """``n`` distinct speakers: dicts with voice, sex, speed and pitch.

    The first ``len(VARIANTS)`` speakers each have their own voice variant
    and a random accent; beyond that, variants come back with another
    accent (a distinct accent-variant pair, speed and pitch per speaker).
    """
    variants = sorted(VARIANTS)
    rng.shuffle(variants)
    if n > len(variants) * len(ACCENTS):
        raise ValueError(f"at most {len(variants) * len(ACCENTS)} distinct demo speakers")
    out, pairs = [], set()
    for k in range(n):
        variant = variants[k % len(variants)]
        accent = rng.choice(ACCENTS)
        while (accent, variant) in pairs:
            accent = rng.choice(ACCENTS)
        pairs.add((accent, variant))
        out.append({
            "voice": f"{accent}+{variant}",
            "sex": VARIANTS[variant],
            "speed": rng.randint(140, 190),
            "pitch": rng.randint(30, 70),
        })
    return out


def reverberate(samples, rng, decay_s=(0.02, 0.04), ir_s=0.25):
    """``samples`` through a random room: an exponentially decaying noise
    impulse response (direct path 1, unit energy, time constant drawn from
    ``decay_s`` seconds by ``rng``, a ``random.Random``), length kept."""
    n_ir = int(ir_s * SAMPLE_RATE)
    decay = np.exp(-np.arange(n_ir) / (rng.uniform(*decay_s) * SAMPLE_RATE))
    ir = np.random.default_rng(rng.randrange(2**32)).standard_normal(n_ir) * decay
    ir[0] = 1.0
    ir /= np.sqrt((ir**2).sum())
    return torchaudio.functional.fftconvolve(
        torch.from_numpy(np.asarray(samples, np.float32)), torch.from_numpy(ir.astype(np.float32))
    )[: len(samples)].numpy()


def add_noise(samples, rng, snr_db, colour=0.0):
    """``samples`` plus Gaussian noise at ``snr_db`` dB below their power;
    ``colour`` in [0, 1) low-passes the noise (one-pole: 0 white, 0.95
    rumble-like), drawn from ``rng`` (a ``random.Random``)."""
    noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(len(samples))
    if colour:
        noise = torchaudio.functional.lfilter(
            torch.from_numpy(noise.astype(np.float32)),
            torch.tensor([1.0, -colour]), torch.tensor([1.0 - colour, 0.0]), clamp=False,
        ).numpy()
    power = float(np.mean(np.square(samples))) + 1e-12
    noise *= math.sqrt(power / (float(np.mean(np.square(noise))) + 1e-12) / 10 ** (snr_db / 10))
    return (samples + noise).astype(np.float32)


# ---------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------
def _marker_text(seed, version=VERSION):
    return json.dumps({"version": version, "seed": seed})


def is_complete(root, seed=0, version=VERSION):
    """Whether the demo corpus at ``root`` was fully made (this version, seed)."""
    marker = Path(root) / MARKER
    return marker.exists() and marker.read_text().strip() == _marker_text(seed, version)


def _write_flac(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def _pool_map(fn, jobs):
    workers = min(8, 2 * (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))


def _build(root, seed, builder, version=VERSION):
    """Runs ``builder(tmp_root, seed)`` in a temporary sibling of ``root`` and
    renames the result to ``root`` (replacing an outdated demo corpus).
    ``version``: a task's own version, to remake only that task's corpus
    when its generator changes."""
    root = Path(root)
    if is_complete(root, seed, version):
        return root
    if root.exists() and not (root / MARKER).exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a demo corpus (no {MARKER} file): "
            "refusing to overwrite it. Choose another --out folder or remove it."
        )
    check_espeak()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        builder(tmp, seed)
        (tmp / MARKER).write_text(_marker_text(seed, version))
        if root.exists():  # outdated version/seed, or an empty folder
            if is_complete(root, seed, version):  # another process finished first
                return root
            shutil.rmtree(root)
        os.rename(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# ---------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------
LIBRISPEECH_SPLITS = {
    # split: (speakers, chapters per speaker, utterances per chapter, min s, max s)
    "train-clean-100": (8, 2, 8, 2.0, 6.0),
    "dev-clean": (3, 1, 5, 2.0, 8.0),
    "test-clean": (4, 1, 8, 2.0, 8.0),
    "test-other": (3, 1, 5, 2.0, 8.0),
    # Pretraining data only (as LibriSpeech's 360 h: the MP3S ASR probe
    # trains on train-clean-100). Last, so that its speakers, beyond the
    # 27 voice variants, reuse variants (with other accents) and the dev and
    # test speakers keep voices of their own.
    "train-clean-360": (20, 2, 8, 2.0, 6.0),
}
LIBRISPEECH_VERSION = f"{VERSION}.ls2"  # train-clean-360, 32 test-clean utterances


def _librispeech(root, seed):
    rng = random.Random(f"librispeech-{seed}")
    n_speakers = sum(v[0] for v in LIBRISPEECH_SPLITS.values())
    voices = speakers(rng, n_speakers)
    spk_ids = sorted(rng.sample(range(19, 9000), n_speakers))
    rng.shuffle(spk_ids)
    jobs, chapters, speaker_rows = [], [], []
    k = 0
    for split, (n_spk, n_chap, n_utt, lo, hi) in LIBRISPEECH_SPLITS.items():
        for _ in range(n_spk):
            spk, voice = spk_ids[k], voices[k]
            k += 1
            speaker_rows.append((spk, voice, split))
            for _ in range(n_chap):
                chapter = rng.randint(10000, 300000)
                folder = root / split / str(spk) / str(chapter)
                utts = [f"{spk}-{chapter}-{u:04d}" for u in range(n_utt)]
                chapters.append((folder, f"{spk}-{chapter}", utts))
                for utt in utts:
                    speed = min(190, max(140, voice["speed"] + rng.randint(-6, 6)))
                    jobs.append((folder, utt, voice, speed, lo, hi))

    def make(folder, utt, voice, speed, lo, hi):
        text, samples = speak_in_range(
            f"{seed}-{utt}", voice["voice"], speed, voice["pitch"], lo, hi
        )
        _write_flac(folder / f"{utt}.flac", samples)
        return utt, text.upper(), len(samples) / SAMPLE_RATE

    results = {utt: (text, dur) for utt, text, dur in _pool_map(make, jobs)}
    minutes = {}
    for folder, chapter_id, utts in chapters:
        lines = [f"{utt} {results[utt][0]}" for utt in utts]
        (folder / f"{chapter_id}.trans.txt").write_text("\n".join(lines) + "\n")
        spk = int(chapter_id.split("-")[0])
        minutes[spk] = minutes.get(spk, 0.0) + sum(results[u][1] for u in utts) / 60
    header = (
        "; Demo corpus made by tools/demo_corpus.py: synthetic speech (espeak-ng),\n"
        "; in the format of LibriSpeech's SPEAKERS.TXT. NAME is the espeak-ng voice.\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
    )
    rows = [
        f"{spk:<5}| {v['sex']} | {split:<16} | {minutes[spk]:5.2f} | espeak-ng {v['voice']} "
        f"speed {v['speed']} pitch {v['pitch']}"
        for spk, v, split in sorted(speaker_rows, key=lambda r: r[0])
    ]
    (root / "SPEAKERS.TXT").write_text(header + "\n".join(rows) + "\n")


def make_librispeech_demo(out_root, seed=0):
    """Makes ``<out_root>/LibriSpeech`` (see the module docstring); returns it."""
    return _build(Path(out_root) / "LibriSpeech", seed, _librispeech, LIBRISPEECH_VERSION)


# ---------------------------------------------------------------------------
# LibriLight
# ---------------------------------------------------------------------------
BOOKS = [
    # (title, LibriVox-like book id, author's surname, genre)
    ("The Lantern of the Valley", "4021", "hawkins", ["Fiction", "Adventure"]),
    ("Letters from the Harbour", "1187", "morrow", ["*Non-fiction", "Letters"]),
    ("The Miller's Daughter", "7302", "ashdown", ["Fiction", "Romance"]),
]
# (speaker index, book index, file number, target seconds)
LIBRILIGHT_FILES = [(0, 0, 1, 48.0), (0, 0, 2, 62.0), (1, 1, 1, 85.0), (2, 2, 1, 74.0)]


def _librilight(root, seed):
    rng = random.Random(f"librilight-{seed}")
    voices = speakers(rng, 3)
    spk_ids = [str(s) for s in rng.sample(range(9000, 12000), 3)]
    jobs = []
    for spk_i, book_i, number, target in LIBRILIGHT_FILES:
        title, book_id, author, genre = BOOKS[book_i]
        words = title.lower().replace("'", "").split()
        slug = "_".join(words[1:] if words[0] in ("the", "a", "an") else words)
        book_dir = f"{slug}_{book_id}_librivox_64kb_mp3"
        stem = f"{slug.replace('_', '')}_{number:02d}_{author}_64kb"
        jobs.append((spk_ids[spk_i], voices[spk_i], book_dir, stem, target,
                     {"id": book_id, "title": title, "genre": genre}))

    def make(spk, voice, book_dir, stem, target, book_meta):
        frng = random.Random(f"{seed}-{stem}")
        pieces = [np.zeros(int(frng.uniform(0.3, 1.0) * SAMPLE_RATE), np.float32)]
        n, vad, k = len(pieces[0]), [], 0
        while True:
            text, speech = speak_in_range(
                f"{seed}-{stem}-{k}", voice["voice"], voice["speed"], voice["pitch"], 2.5, 8.0
            )
            k += 1
            gap = np.zeros(int(frng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)
            if (n + len(speech) + len(gap)) / SAMPLE_RATE > 90.0:
                break
            # to the millisecond, rounded outwards: the interval holds all of the speech
            vad.append([math.floor(n / SAMPLE_RATE * 1000) / 1000,
                        math.ceil((n + len(speech)) / SAMPLE_RATE * 1000) / 1000])
            pieces += [speech, gap]
            n += len(speech) + len(gap)
            if n / SAMPLE_RATE >= target:
                break
        folder = root / "small" / spk / book_dir
        _write_flac(folder / f"{stem}.flac", np.concatenate(pieces))
        meta = {
            "speaker": spk,
            "book_meta": {
                **book_meta,
                "url_librivox": f"https://librivox.org/demo-{book_meta['id']}/",
                "totaltime": "0:01:30",
                "language": "English",
                "Dramatic Readings": False,
                "meta_genre": "Literature",
                "note": f"demo corpus: espeak-ng {voice['voice']}",
            },
            "snr": round(frng.uniform(10.0, 40.0), 3),
            "voice_activity": vad,
        }
        (folder / f"{stem}.json").write_text(json.dumps(meta, indent=1))

    _pool_map(make, jobs)


def make_librilight_demo(out_root, seed=0):
    """Makes ``<out_root>/LibriLight`` (see the module docstring); returns it."""
    return _build(Path(out_root) / "LibriLight", seed, _librilight)


def _task_module(module, function):
    """A builder of the MP3S demo corpora, imported on first use (those
    modules import this one for the synthesis helpers)."""

    def build(out_root, seed=0):
        if str(TOOLS) not in sys.path:
            sys.path.insert(0, str(TOOLS))
        return getattr(importlib.import_module(module), function)(out_root, seed)

    return build


TOOLS = Path(__file__).resolve().parent
TASKS = {
    "librispeech": make_librispeech_demo,
    "librilight": make_librilight_demo,
    "voxceleb": _task_module("demo_voxceleb", "make_voxceleb_demo"),
    "iemocap": _task_module("demo_iemocap", "make_iemocap_demo"),
    "slurp": _task_module("demo_slurp", "make_slurp_demo"),
    "buckeye": _task_module("demo_buckeye", "make_buckeye_demo"),
    "commonvoice": _task_module("demo_commonvoice", "make_commonvoice_demo"),
    "librispeech_finetuning": _task_module(
        "demo_librispeech_finetuning", "make_librispeech_finetuning_demo"
    ),
}


def make_demo_corpus(out_dir, tasks=tuple(TASKS), seed=0):
    """Makes the demo corpora ``tasks`` under ``out_dir`` (skipping finished ones).

    Arguments
    ---------
    out_dir : str or Path
        Parent folder: the corpora go to ``<out_dir>/LibriSpeech`` and
        ``<out_dir>/LibriLight``.
    tasks : sequence of str
        Any of ``TASKS``: ``"librispeech"``, ``"librilight"``,
        ``"voxceleb"``, ``"iemocap"``, ``"slurp"``, ``"buckeye"``,
        ``"commonvoice"``, ``"librispeech_finetuning"``.
    seed : int
        Same seed, same corpus.

    Returns
    -------
    dict
        Task name -> root folder (Path) of its corpus.

    Example
    -------
    >>> roots = make_demo_corpus("demo_data", ["librispeech"])  # doctest: +SKIP
    >>> sorted(p.name for p in roots["librispeech"].iterdir())  # doctest: +SKIP
    ['SPEAKERS.TXT', 'dev-clean', 'test-clean', 'test-other', 'train-clean-100']
    """
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"Unknown demo corpus {sorted(unknown)}: choose from {sorted(TASKS)}")
    return {task: TASKS[task](out_dir, seed=seed) for task in tasks}


def demo_data_root():
    """Where the shared demo corpora are cached: ``$DEMO_DATA`` or ``<repo>/demo_data``."""
    return Path(os.environ.get("DEMO_DATA", REPO / "demo_data"))


def ensure_demo_corpus(tasks=tuple(TASKS), seed=0):
    """Makes (once) and returns the cached demo corpora, for tests and demos:
    ``{"librispeech": <root>/LibriSpeech, "librilight": <root>/LibriLight}``."""
    return make_demo_corpus(demo_data_root(), tasks, seed)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of: " + ",".join(TASKS))
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        roots = make_demo_corpus(args.out, args.tasks, args.seed)
    except (SynthesisError, FileExistsError, ValueError) as err:
        parser.exit(1, f"demo_corpus.py: error: {err}\n")
    for task, root in roots.items():
        n_files, seconds = audio_stats(root)
        print(f"[demo corpus] {task}: {root} ({n_files} files, {seconds / 60:.1f} min of audio)")


def audio_stats(root):
    """Number of audio files (FLAC, WAV, MP3, also inside zip archives, as
    Buckeye's) under ``root`` and their total duration in seconds."""
    n_files, seconds = 0, 0.0

    def visit(name, read):
        nonlocal n_files, seconds
        suffix = os.path.splitext(name)[1].lower()
        if suffix in (".flac", ".wav", ".mp3"):
            n_files += 1
            seconds += sf.info(read()).duration
        elif suffix == ".zip":
            with zipfile.ZipFile(read()) as archive:
                for member in archive.namelist():
                    visit(member, lambda m=member: io.BytesIO(archive.read(m)))

    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            visit(path.name, lambda p=path: str(p))
    return n_files, seconds


if __name__ == "__main__":
    main()
