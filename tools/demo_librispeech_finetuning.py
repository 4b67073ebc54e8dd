#!/usr/bin/env python3
"""A tiny Libri-light fine-tuning set, ``librispeech_finetuning``, in the
real archive's layout, taken from the demo LibriSpeech.

Made by ``make_librispeech_finetuning_demo(out_root)`` (registered as
``"librispeech_finetuning"`` in ``demo_corpus.TASKS``)::

    <out_root>/librispeech_finetuning/1h/<fold>/{clean,other}/<speaker>/<chapter>/
        <speaker>-<chapter>-<NNNN>.flac, <speaker>-<chapter>.trans.txt
    <out_root>/librispeech_finetuning/9h/{clean,other}/<speaker>/<chapter>/...

as Libri-light's ``librispeech_finetuning.tgz`` extracts (folds 0 to 5 of
the "1 h" set, then the rest of the "10 h" set), with utterances of the
demo LibriSpeech ``train-clean-100`` -- Libri-light's sets are drawn from
LibriSpeech's training splits too, so a demo encoder pretrained on the demo
LibriSpeech has heard them, as a real one has. Each of the 16 demo training
chapters goes to one place, in order: folds 0-5 get one chapter under
``clean/`` and one under ``other/`` with its first 2 utterances, ``9h/``
the last 4 chapters whole (2 ``clean``, 2 ``other``): 24 + 32 utterances.
The ``clean``/``other`` label is only a folder name here (the demo has no
noisy speech); the real archive's ``phones/`` folder is not made.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import shutil
from pathlib import Path

from demo_corpus import _build, make_librispeech_demo

VERSION = "1"
PER_FOLD_UTTERANCES = 2


def _chapters(librispeech):
    """``(speaker, chapter, [flac files])`` of the demo training split, by
    speaker and chapter number."""
    split = librispeech / "train-clean-100"
    found = []
    for chapter_dir in sorted(split.glob("*/*"), key=lambda p: (int(p.parent.name), int(p.name))):
        found.append((chapter_dir.parent.name, chapter_dir.name, sorted(chapter_dir.glob("*.flac"))))
    return found


def _copy_chapter(src_flacs, dest, speaker, chapter):
    """Copies ``src_flacs`` with their transcript lines (only theirs, as in
    Libri-light's ``trans.txt`` files) into ``dest/<speaker>/<chapter>``."""
    folder = dest / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    trans = src_flacs[0].parent / f"{speaker}-{chapter}.trans.txt"
    lines = dict(line.split(" ", 1) for line in trans.read_text().splitlines() if line)
    kept = []
    for flac in src_flacs:
        shutil.copyfile(flac, folder / flac.name)
        kept.append(f"{flac.stem} {lines[flac.stem]}")
    (folder / trans.name).write_text("\n".join(kept) + "\n")


def make_librispeech_finetuning_demo(out_root, seed=0):
    """Makes ``<out_root>/librispeech_finetuning`` (see the module
    docstring) from the demo LibriSpeech of the same seed; returns it."""
    librispeech = make_librispeech_demo(out_root, seed)

    def build(root, seed):
        chapters = _chapters(librispeech)
        if len(chapters) < 16:
            raise ValueError(f"{librispeech} has {len(chapters)} training chapters, 16 expected.")
        for fold in range(6):
            for k, condition in enumerate(("clean", "other")):
                speaker, chapter, flacs = chapters[2 * fold + k]
                _copy_chapter(flacs[:PER_FOLD_UTTERANCES], root / "1h" / str(fold) / condition,
                              speaker, chapter)
        for k, (speaker, chapter, flacs) in enumerate(chapters[12:16]):
            _copy_chapter(flacs, root / "9h" / ("clean" if k < 2 else "other"), speaker, chapter)

    return _build(Path(out_root) / "librispeech_finetuning", seed, build, version=VERSION)
