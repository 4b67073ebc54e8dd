#!/usr/bin/env python3
"""A tiny SLURP of synthetic voice commands, in the real dataset's layout.

Made by ``make_slurp_demo(out_root)`` (registered as ``"slurp"`` in
``demo_corpus.TASKS``)::

    <out_root>/SLURP/dataset/slurp/{train,devel,test,train_synthetic}.jsonl
    <out_root>/SLURP/audio/slurp_real/audio-<stamp>[-headset].flac
    <out_root>/SLURP/audio/slurp_synth/audio-<stamp>.flac

as in a clone of https://github.com/pswietojanski/slurp whose audio was
downloaded with ``scripts/download_audio.sh`` and extracted in ``audio/``.
Each jsonl line is one SLURP entry with the real fields (``slurp_id``,
``sentence``, ``sentence_annotation`` with ``[type : filler]`` entities,
``intent``, ``action``, ``tokens``, ``scenario``, ``recordings`` =
``[{file, wer, ent_wer, status}]``, ``entities`` = ``[{span, type}]``); a
sentence has one or two recordings, the close-talk ``-headset`` file and a
far-field copy (reverberated, with noise), as in SLURP.

Commands of 4 scenarios x 2 actions (``alarm_set``, ``alarm_query``,
``iot_hue_lighton``, ``iot_hue_lightoff``, ``calendar_set``,
``calendar_query``, ``play_music``, ``play_radio``: real SLURP labels), from a
few templates with slot fillers, spoken by 4 espeak-ng voices (each
recording at its own speed and pitch around its voice's): 160 train, 40
devel and 40 test recordings (1-3 s; about 8 minutes), balanced over the
intents, plus 4 synthetic-split recordings that the recipe must skip
(SLURP's ``slurp_synth``). With more voices, a mean-pooled probe on a tiny
demo encoder needs more data than a CPU test can afford to generalise.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
import random
from pathlib import Path

import numpy as np

from demo_corpus import _build, _pool_map, _write_flac, reverberate, speakers, synthesize

TIMES = ["seven", "six thirty", "eight o'clock", "five am", "nine fifteen", "noon", "ten pm", "half past six"]
DAYS = ["tomorrow", "today", "on monday", "this friday", "next week", "on the weekend"]
ROOMS = ["kitchen", "bedroom", "living room", "hallway", "bathroom", "office"]
PEOPLE = ["anna", "george", "my boss", "the team", "sarah", "peter"]
EVENTS = ["lunch", "the dentist", "a meeting", "yoga class", "a phone call"]
GENRES = ["jazz", "rock", "classical", "pop", "country", "relaxing"]
ARTISTS = ["the beatles", "adele", "mozart", "queen", "elvis"]
STATIONS = ["bbc", "jazz fm", "capital", "classic", "the local"]
SLOTS = {
    "time": TIMES, "date": DAYS, "house_place": ROOMS, "person": PEOPLE,
    "event_name": EVENTS, "music_genre": GENRES, "artist_name": ARTISTS,
    "radio_name": STATIONS,
}
# (scenario, action): templates; {slot} is an entity of that type
TEMPLATES = {
    ("alarm", "set"): [
        "set an alarm for {time}", "wake me up at {time} with an alarm",
        "please set my alarm to {time} {date}",
    ],
    ("alarm", "query"): [
        "what alarms do i have {date}", "is there an alarm set for {date}",
        "check my alarms please",
    ],
    ("iot", "hue_lighton"): [
        "turn the lights on in the {house_place}", "switch on the {house_place} lights",
        "lights on please",
    ],
    ("iot", "hue_lightoff"): [
        "turn off the lights in the {house_place}", "switch the {house_place} lights off",
        "lights off please",
    ],
    ("calendar", "set"): [
        "add a meeting with {person} to my calendar", "put {event_name} in my calendar {date}",
        "schedule {event_name} on my calendar {date}",
    ],
    ("calendar", "query"): [
        "what is on my calendar {date}", "check my calendar for {date}",
        "do i have meetings in my calendar {date}",
    ],
    ("play", "music"): [
        "play some {music_genre} music", "play music by {artist_name}",
        "play my {music_genre} music playlist",
    ],
    ("play", "radio"): [
        "play {radio_name} radio", "play the radio station {radio_name}",
        "turn on the radio and play {radio_name}",
    ],
}
# split: (sentences, sentences with a second, far-field recording)
SPLITS = {"train": (96, 64), "devel": (24, 16), "test": (24, 16)}
N_SYNTHETIC = 4
N_VOICES = 4


def _fill(rng, template):
    """Fills ``template``; returns (sentence, annotation, entities)."""
    words, annotation, entities = [], [], []
    for piece in template.split():
        if piece.startswith("{"):
            slot = piece.strip("{}")
            filler = rng.choice(SLOTS[slot]).split()
            entities.append({"span": list(range(len(words), len(words) + len(filler))), "type": slot})
            annotation.append(f"[{slot} : {' '.join(filler)}]")
            words += filler
        else:
            words.append(piece)
            annotation.append(piece)
    return " ".join(words), " ".join(annotation), entities


def _far_field(samples, rng):
    """A distant-microphone copy: short exponential reverb, noise, quieter."""
    wet = reverberate(samples, rng)
    noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(len(wet))
    wet = 0.7 * wet / (np.abs(wet).max() + 1e-8)
    wet += noise.astype(np.float32) * 0.003
    return np.clip(wet, -1.0, 1.0).astype(np.float32)


def _entry(slurp_id, sentence, annotation, entities, scenario, action, files):
    return {
        "slurp_id": slurp_id,
        "sentence": sentence,
        "sentence_annotation": annotation,
        "intent": f"{scenario}_{action}",
        "action": action,
        "tokens": [
            {"surface": w, "id": i, "lemma": w, "pos": "X"}
            for i, w in enumerate(sentence.split())
        ],
        "scenario": scenario,
        "recordings": [
            {"file": f, "wer": 0.0, "ent_wer": 0.0 if entities else None, "status": "correct"}
            for f in files
        ],
        "entities": entities,
    }


def _slurp(root, seed):
    rng = random.Random(f"slurp-{seed}")
    voices = speakers(rng, N_VOICES)
    intents = sorted(TEMPLATES)
    ids = rng.sample(range(1, 20000), sum(v[0] for v in SPLITS.values()) + N_SYNTHETIC)
    stamps = iter(rng.sample(range(1434500000, 1509000000), len(ids)))
    jobs, entries = [], {}
    k = 0
    for split, (n_sent, n_far) in SPLITS.items():
        entries[split] = []
        for i in range(n_sent):
            scenario, action = intents[i % len(intents)]
            sentence, annotation, entities = _fill(rng, rng.choice(TEMPLATES[scenario, action]))
            stamp = next(stamps)
            files = [f"audio-{stamp}-headset.flac"] + ([f"audio-{stamp}.flac"] if i < n_far else [])
            entries[split].append(
                _entry(ids[k], sentence, annotation, entities, scenario, action, files)
            )
            k += 1
            voice = rng.choice(voices)
            speed = min(200, max(130, voice["speed"] + rng.randint(-15, 15)))
            pitch = min(90, max(10, voice["pitch"] + rng.randint(-10, 10)))
            jobs.append((root / "audio" / "slurp_real", files, sentence, voice["voice"],
                         speed, pitch, rng.randrange(2**32)))
    entries["train_synthetic"] = []
    for i in range(N_SYNTHETIC):
        scenario, action = intents[i % len(intents)]
        sentence, annotation, entities = _fill(rng, rng.choice(TEMPLATES[scenario, action]))
        files = [f"audio-{next(stamps)}.flac"]
        entries["train_synthetic"].append(
            _entry(ids[k], sentence, annotation, entities, scenario, action, files)
        )
        k += 1
        jobs.append((root / "audio" / "slurp_synth", files, sentence, "en-us", 170, 50, 0))

    def make(folder, files, sentence, voice, speed, pitch, noise_seed):
        samples = synthesize(sentence, voice, speed, pitch)
        _write_flac(folder / files[0], samples)
        if len(files) > 1:
            _write_flac(folder / files[1], _far_field(samples, random.Random(noise_seed)))

    _pool_map(make, jobs)
    for split, rows in entries.items():
        path = root / "dataset" / "slurp" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_slurp_demo(out_root, seed=0):
    """Makes ``<out_root>/SLURP`` (see the module docstring); returns it."""
    return _build(Path(out_root) / "SLURP", seed, _slurp)


if __name__ == "__main__":
    import sys

    print(make_slurp_demo(sys.argv[1] if len(sys.argv) > 1 else "demo_data"))
