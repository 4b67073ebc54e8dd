#!/usr/bin/env python3
"""A tiny Common Voice 11.0 in Welsh and Basque, synthetic speech in the
real release's layout.

Made by ``make_commonvoice_demo(out_root)`` (registered as ``"commonvoice"``
in ``demo_corpus.TASKS``)::

    <out_root>/CommonVoice/cv-corpus-11.0-2022-09-21/<cy|eu>/clips/common_voice_<lang>_<n>.mp3
    <out_root>/CommonVoice/cv-corpus-11.0-2022-09-21/<cy|eu>/{train,dev,test}.tsv
    <out_root>/CommonVoice/cv-corpus-11.0-2022-09-21/<cy|eu>/{validated,invalidated,other,reported}.tsv

as in an extracted ``cv-corpus-11.0-2022-09-21-<lang>.tar.gz``: 48 kHz mono
MP3 clips (with a little silence around the speech), TSVs with Common
Voice 11.0's header (``client_id path sentence up_votes down_votes age
gender accents locale segment``; ``client_id`` a 128-hex-digit hash). The
splits share no speaker, as Common Voice's. ``validated.tsv`` lists the
three splits' clips and a few validated clips in none of them;
``other.tsv`` and ``invalidated.tsv`` list clips that must not be used;
``reported.tsv`` is empty.

Sentences come from small Welsh and Basque grammars (capitalised, with
punctuation, as Common Voice's texts: "Mae'r ci yn cysgu yn yr ardd.",
"Mikelek liburua irakurri du."), spoken by espeak-ng's ``cy`` and ``eu``
voices with its voice variants (one variant, speed and pitch per speaker).
A few sentences have fewer than three words or doubled spaces, which MP3S's
normalisation drops or collapses. Per language: 6 training speakers x 12
clips, 3 validation and 3 test speakers x 5 clips, plus 9 clips outside the
splits: about 6 minutes of audio per language, ~20 s to make on 2 cores.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import hashlib
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from demo_corpus import VARIANTS, _build, _pool_map, synthesize

RELEASE = "cv-corpus-11.0-2022-09-21"
CLIP_RATE = 48000
LANGUAGES = ("cy", "eu")
# split: (speakers, clips per speaker)
SPLITS = {"train": (6, 12), "dev": (3, 5), "test": (3, 5)}
EXTRA = {"validated": 4, "other": 3, "invalidated": 2}  # clips outside the splits
TSV_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age",
              "gender", "accents", "locale", "segment"]
REPORTED_HEADER = ["sentence", "sentence_id", "locale", "reason"]
AGES = ["teens", "twenties", "thirties", "fourties", "fifties", "sixties", ""]

# ---------------------------------------------------------------------------
# Welsh: "Mae'r ci yn fawr.", "Mae Siân yn darllen llyfr heddiw." ...
# (nouns that take no mutation after the article, predicates already mutated)
# ---------------------------------------------------------------------------
CY = {
    "nouns": ["ci", "tŷ", "bachgen", "dyn", "car", "llyfr", "bwrdd", "drws", "afal",
              "bara", "te", "coffi", "mynydd", "môr", "tywydd", "plentyn", "athro",
              "gwely", "trên", "bws", "ffermwr", "dŵr", "castell", "pentref"],
    "predicates": ["fawr", "fach", "dda", "goch", "las", "ddu", "wyn", "hapus", "oer",
                   "dawel", "brysur", "hen", "newydd", "hir", "boeth", "gyflym", "braf"],
    "names": ["Siân", "Dafydd", "Gwen", "Rhys", "Elin", "Owain", "Megan", "Huw", "Catrin"],
    "verbs": ["darllen", "ysgrifennu", "bwyta", "yfed", "gweld", "prynu", "gwylio",
              "coginio", "glanhau", "chwilio am"],
    "objects": ["llyfr", "afal", "bara", "te", "coffi", "ffilm", "cân", "llythyr",
                "papur newydd", "cinio", "ceffyl"],
    "times": ["heddiw", "ddoe", "yfory", "yn y bore", "gyda'r nos", "bob dydd", "nawr"],
    "places": ["yn yr ardd", "yn y tŷ", "ar y bwrdd", "yng Nghaerdydd", "yn y dref",
               "ger y môr", "yn yr ysgol", "ar y mynydd"],
    "short": ["Diolch.", "Bore da.", "Nos da!", "Croeso."],
}


def _welsh(rng):
    c = rng.choice
    kind = rng.random()
    if kind < 0.3:
        text = f"Mae'r {c(CY['nouns'])} yn {c(CY['predicates'])} {c(CY['times'])}."
    elif kind < 0.6:
        text = f"Mae {c(CY['names'])} yn {c(CY['verbs'])} {c(CY['objects'])} {c(CY['places'])}."
    elif kind < 0.75:
        text = f"Roedd y {c(CY['nouns'])} yn {c(CY['predicates'])} iawn, on'd oedd?"
    elif kind < 0.9:
        text = f"Dw i'n hoffi {c(CY['objects'])} ond mae {c(CY['names'])} yn hoffi {c(CY['objects'])}."
    else:
        text = f"Ble mae'r {c(CY['nouns'])}?"
    return text


# ---------------------------------------------------------------------------
# Basque: "Etxea handia da.", "Mikelek liburua irakurri du gaur." ...
# ---------------------------------------------------------------------------
EU = {
    "nouns": ["Etxea", "Txakurra", "Katua", "Mendia", "Itsasoa", "Liburua", "Mahaia",
              "Ura", "Ogia", "Kafea", "Herria", "Haurra", "Irakaslea", "Kalea", "Eguna",
              "Gaua", "Lagunak", "Baserria", "Zuhaitza"],
    "adjectives": ["handia", "txikia", "polita", "zaharra", "berria", "beltza", "zuria",
                   "gorria", "ederra", "garbia", "hotza", "beroa", "luzea", "isila", "azkarra"],
    "agents": ["Mikelek", "Anek", "Jonek", "Mirenek", "Iñakik", "Nereak", "Amaiak",
               "Xabierrek", "Itziarrek"],
    "objects": ["liburua", "ogia", "ura", "kafea", "etxea", "mahaia", "gutuna",
                "sagarra", "filma", "egunkaria", "arraina"],
    "verbs": ["irakurri du", "jan du", "edan du", "ikusi du", "erosi du", "idatzi du",
              "garbitu du", "ekarri du"],
    "times": ["gaur", "atzo", "bihar", "goizean", "gauean", "arratsaldean"],
    "places": ["etxean", "mendian", "hondartzan", "Bilbon", "Donostian", "kalean",
               "herrian", "Gasteizen"],
    "short": ["Kaixo.", "Eskerrik asko.", "Egun on!", "Agur."],
}


def _basque(rng):
    c = rng.choice
    kind = rng.random()
    if kind < 0.3:
        text = f"{c(EU['nouns'])} {c(EU['adjectives'])} da {c(EU['times'])}."
    elif kind < 0.65:
        text = f"{c(EU['agents'])} {c(EU['objects'])} {c(EU['verbs'])} {c(EU['places'])}."
    elif kind < 0.8:
        text = f"{c(EU['times']).capitalize()}, {c(EU['agents'])} {c(EU['objects'])} {c(EU['verbs'])}."
    elif kind < 0.9:
        text = f"Non dago {c(EU['objects'])}? {c(EU['places']).capitalize()}, ezta?"
    else:
        text = f"{c(EU['nouns'])} ez da {c(EU['adjectives'])}, oso {c(EU['adjectives'])} baizik."
    return text


GRAMMARS = {"cy": (_welsh, CY["short"]), "eu": (_basque, EU["short"])}


def _sentence(rng, language, index):
    """The index-th sentence of a split: every 12th is a one- or two-word
    sentence, every 7th has a doubled space."""
    grammar, short = GRAMMARS[language]
    if index % 12 == 5:
        return rng.choice(short)
    text = grammar(rng)
    if index % 7 == 3:
        text = text.replace(" ", "  ", 1)
    return text


def _client_id(language, seed, k):
    return hashlib.sha512(f"demo-{language}-{seed}-{k}".encode()).hexdigest()


def _language(root, language, seed):
    rng = random.Random(f"commonvoice-{language}-{seed}")
    variants = sorted(VARIANTS)
    rng.shuffle(variants)
    n_speakers = sum(n for n, _ in SPLITS.values()) + 2
    speakers = [
        {"client_id": _client_id(language, seed, k), "voice": f"{language}+{variant}",
         "gender": {"M": "male", "F": "female"}[VARIANTS[variant]] if rng.random() < 0.8 else "",
         "age": rng.choice(AGES), "speed": rng.randint(140, 180), "pitch": rng.randint(30, 70)}
        for k, variant in enumerate(variants[:n_speakers])
    ]
    numbers = iter(rng.sample(range(30000000, 38000000), 200))
    tsvs, jobs, k = {}, [], 0
    groups = [(split, n_spk, n_clips) for split, (n_spk, n_clips) in SPLITS.items()]
    groups += [(name, 1, n) for name, n in EXTRA.items()]  # spoken by the 2 spare speakers
    for name, n_spk, n_clips in groups:
        rows = []
        for _ in range(n_spk):
            spk = speakers[min(k, n_speakers - 1)]
            k += 1
            for i in range(n_clips):
                path = f"common_voice_{language}_{next(numbers)}.mp3"
                sentence = _sentence(rng, language, len(rows))
                rows.append([spk["client_id"], path, sentence, str(rng.randint(2, 4)),
                             str(rng.randint(0, 1)), spk["age"], spk["gender"], "",
                             language, ""])
                jobs.append((root / "clips" / path, sentence, spk, rng.randrange(2**32)))
        tsvs[name] = rows
    for name in ("train", "dev", "test"):
        tsvs["validated"] = tsvs[name] + tsvs["validated"]

    def make(path, sentence, spk, noise_seed):
        speech = synthesize(sentence, spk["voice"], spk["speed"], spk["pitch"], CLIP_RATE)
        local = random.Random(noise_seed)
        pad = [np.zeros(int(local.uniform(0.2, 0.6) * CLIP_RATE), np.float32) for _ in range(2)]
        samples = np.concatenate([pad[0], speech, pad[1]])
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, CLIP_RATE, format="MP3", subtype="MPEG_LAYER_III")

    _pool_map(make, jobs)
    for name, rows in tsvs.items():
        lines = ["\t".join(TSV_HEADER)] + ["\t".join(r) for r in rows]
        (root / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "reported.tsv").write_text("\t".join(REPORTED_HEADER) + "\n", encoding="utf-8")


def _commonvoice(root, seed):
    for language in LANGUAGES:
        _language(root / RELEASE / language, language, seed)


def make_commonvoice_demo(out_root, seed=0):
    """Makes ``<out_root>/CommonVoice`` (see the module docstring); returns it."""
    return _build(Path(out_root) / "CommonVoice", seed, _commonvoice)


if __name__ == "__main__":
    import sys

    print(make_commonvoice_demo(sys.argv[1] if len(sys.argv) > 1 else "demo_data"))
