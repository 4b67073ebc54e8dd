#!/usr/bin/env python3
"""A tiny VoxCeleb1 of synthetic speech, in the real dataset's layout.

Made by ``make_voxceleb_demo(out_root)`` (registered as ``"voxceleb"`` in
``demo_corpus.TASKS``, so ``python tools/demo_corpus.py --tasks voxceleb``
makes it too)::

    <out_root>/VoxCeleb1/wav/<spk id>/<video id>/<NNNNN>.wav   16 kHz mono
    <out_root>/VoxCeleb1/veri_test2.txt   lines "<label> <enrol> <test>"

as in VoxCeleb1 (speaker ids ``id1xxxx``, 11-character YouTube-like video
ids, utterances ``00001.wav``...; trial paths relative to ``wav/``, label 1
for a target trial). Each speaker is one espeak-ng voice (variant, accent,
speed, pitch: ``demo_corpus.speakers``) saying 4-7 s sentences (VoxCeleb1
utterances last at least 4 s; the MP3S preparation cuts training utterances
into one or two 3-s chunks), two "videos" per speaker. 16 speakers are for training (8 utterances each: with fewer, the probe's
speaker classifier is perfect within two epochs whatever its input) and 8
other speakers make the trial list (5 utterances each: every pair of their
utterances, 780 trials of which 80 targets, so that an EER moves in steps of
about 1 point, not 10), as the real trial list only holds the 40 test
speakers. About 14 minutes of audio, ~20 s to make on 2 cores.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import itertools
import random
import string
from pathlib import Path

import soundfile as sf

from demo_corpus import SAMPLE_RATE, VERSION, _build, _pool_map, speak_in_range, speakers

N_TRAIN_SPEAKERS = 16
N_TEST_SPEAKERS = 8
TRAIN_UTTS = 8
TEST_UTTS = 5
MIN_S, MAX_S = 4.0, 7.0
CORPUS_VERSION = f"{VERSION}.vox3"  # 16 training, 8 x 5 test speakers (vox1: 8, 3 x 4)


def _video_id(rng):
    chars = string.ascii_letters + string.digits + "-_"
    return "".join(rng.choice(chars) for _ in range(11))


def _voxceleb(root, seed):
    rng = random.Random(f"voxceleb-{seed}")
    n_spk = N_TRAIN_SPEAKERS + N_TEST_SPEAKERS
    voices = speakers(rng, n_spk)
    ids = [f"id1{n:04d}" for n in sorted(rng.sample(range(1, 1300), n_spk))]
    rng.shuffle(ids)
    jobs, test_utts = [], {}
    for k, (spk, voice) in enumerate(zip(ids, voices)):
        n_utt = TRAIN_UTTS if k < N_TRAIN_SPEAKERS else TEST_UTTS
        videos = [_video_id(rng), _video_id(rng)]
        utts = []
        for u in range(n_utt):
            rel = f"{spk}/{videos[u % 2]}/{u // 2 + 1:05d}.wav"
            speed = min(200, max(130, voice["speed"] + rng.randint(-8, 8)))
            jobs.append((rel, voice, speed))
            utts.append(rel)
        if k >= N_TRAIN_SPEAKERS:
            test_utts[spk] = utts

    def make(rel, voice, speed):
        _, samples = speak_in_range(
            f"vox-{seed}-{rel}", voice["voice"], speed, voice["pitch"], MIN_S, MAX_S
        )
        path = root / "wav" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")

    _pool_map(make, jobs)
    # Trials: every pair of test utterances (target when same speaker).
    all_test = [u for spk in sorted(test_utts) for u in test_utts[spk]]
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}"
        for a, b in itertools.combinations(all_test, 2)
    ]
    (root / "veri_test2.txt").write_text("\n".join(lines) + "\n")


def make_voxceleb_demo(out_root, seed=0):
    """Makes ``<out_root>/VoxCeleb1`` (see the module docstring); returns it.

    Example
    -------
    >>> root = make_voxceleb_demo("demo_data")  # doctest: +SKIP
    >>> (root / "veri_test2.txt").read_text().split()[:1]  # doctest: +SKIP
    ['1']
    """
    return _build(Path(out_root) / "VoxCeleb1", seed, _voxceleb, CORPUS_VERSION)


if __name__ == "__main__":
    print(make_voxceleb_demo("demo_data"))
