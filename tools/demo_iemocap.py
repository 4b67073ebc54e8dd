#!/usr/bin/env python3
"""A tiny IEMOCAP of synthetic emotional speech, in the real dataset's layout.

Made by ``make_iemocap_demo(out_root)`` (registered as ``"iemocap"`` in
``demo_corpus.TASKS``)::

    <out_root>/IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<turn>.wav
    <out_root>/IEMOCAP_full_release/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt

as in IEMOCAP: each session has one female and one male speaker, dialogs
``Ses0<k>F_impro01`` and ``Ses0<k>M_script01_1`` hold turns of both
(``<dialog>_F000``, ``<dialog>_M001``, ...), 16 kHz mono WAV; the
EmoEvaluation files have the real header line and one
``[start - end]<TAB>turn<TAB>label<TAB>[V, A, D]`` line per turn followed by
annotator lines (``C-E1:``...), which the preparation must skip. Labels are
``neu``, ``hap``, ``exc``, ``sad``, ``ang`` (the 4 classes, ``exc`` merged into
happy) plus some ``fru`` and ``xxx`` turns that the preparation must drop.

Emotion is what a probe can learn: each label shifts the speaker's espeak-ng
voice (speed, pitch) and loudness the same way (happy/excited: faster, higher;
sad: slower, lower, quieter; angry: fast, louder). Per speaker: 3 turns of
each of the four classes and 2 to drop. About 4 minutes of audio.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import random
from pathlib import Path

import numpy as np
import soundfile as sf

from demo_corpus import ACCENTS, SAMPLE_RATE, VARIANTS, _build, _pool_map, speak_in_range

# label: (speed delta, pitch delta, gain)
EMOTIONS = {
    "neu": (0, 0, 0.5),
    "hap": (35, 25, 0.7),
    "exc": (40, 28, 0.75),
    "sad": (-45, -20, 0.2),
    "ang": (30, -12, 1.0),
    "fru": (10, -5, 0.6),
    "xxx": (0, 5, 0.5),
}
# labels of each speaker's turns (hap and exc are one class: 3 "happy")
TURN_LABELS = ["neu"] * 3 + ["hap", "hap", "exc"] + ["sad"] * 3 + ["ang"] * 3 + ["fru", "xxx"]
VAD = {"neu": "2.5000", "hap": "4.0000", "exc": "4.5000", "sad": "1.5000",
       "ang": "1.5000", "fru": "2.0000", "xxx": "3.0000"}
HEADER = (
    "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
)


def _voices(rng):
    """5 female and 5 male voices: ``{"F": [...], "M": [...]}``."""
    out = {}
    for sex in "FM":
        variants = sorted(v for v, s in VARIANTS.items() if s == sex)
        rng.shuffle(variants)
        out[sex] = [
            {"voice": f"{rng.choice(ACCENTS)}+{v}", "speed": rng.randint(140, 175),
             "pitch": rng.randint(35, 60)}
            for v in variants[:5]
        ]
    return out


def _iemocap(root, seed):
    rng = random.Random(f"iemocap-{seed}")
    voices = _voices(rng)
    jobs, dialogs = [], {}
    for session in range(1, 6):
        names = [f"Ses0{session}F_impro01", f"Ses0{session}M_script01_1"]
        for sex in "FM":
            voice = voices[sex][session - 1]
            labels = list(TURN_LABELS)
            rng.shuffle(labels)
            for k, label in enumerate(labels):
                dialog = names[k % 2]
                turn = f"{dialog}_{sex}{k // 2:03d}"
                dialogs.setdefault((session, dialog), []).append((turn, label))
                jobs.append((session, dialog, turn, voice, label))

    def make(session, dialog, turn, voice, label):
        d_speed, d_pitch, gain = EMOTIONS[label]
        _, samples = speak_in_range(
            f"iemocap-{seed}-{turn}", voice["voice"], voice["speed"] + d_speed,
            min(99, max(0, voice["pitch"] + d_pitch)), 1.5, 3.0,
        )
        samples = samples / max(1e-3, float(np.abs(samples).max())) * gain * 0.9
        path = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{turn}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        return turn, len(samples) / SAMPLE_RATE

    durations = dict(_pool_map(make, jobs))
    for (session, dialog), turns in dialogs.items():
        folder = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        folder.mkdir(parents=True, exist_ok=True)
        lines, t = [HEADER], 1.0
        for turn, label in sorted(turns):
            end = t + durations[turn]
            v = VAD[label]
            lines.append(
                f"[{t:.4f} - {end:.4f}]\t{turn}\t{label}\t[{v}, {v}, 2.5000]\n"
                f"C-E1:\t{label.capitalize()};\t()\n"
                f"A-E2:\tval 3; act 3; dom  3;\t()\n\n"
            )
            t = end + 0.5
        (folder / f"{dialog}.txt").write_text("".join(lines))


def make_iemocap_demo(out_root, seed=0):
    """Makes ``<out_root>/IEMOCAP_full_release`` (see the module docstring);
    returns it.

    Example
    -------
    >>> root = make_iemocap_demo("demo_data")  # doctest: +SKIP
    >>> sorted(p.name for p in root.glob("Session*"))  # doctest: +SKIP
    ['Session1', 'Session2', 'Session3', 'Session4', 'Session5']
    """
    return _build(Path(out_root) / "IEMOCAP_full_release", seed, _iemocap)


if __name__ == "__main__":
    print(make_iemocap_demo("demo_data"))
