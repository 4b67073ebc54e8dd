"""Data preparation for SLURP (https://github.com/pswietojanski/slurp).

Writes one SpeechBrain CSV manifest per split, ``<save_folder>/<split>.csv``
(``train``, ``devel``, ``test``), one row per **real** recording, with the
columns ``ID, duration, wav, scenario, action, intent, semantics,
transcript``:

* ``ID``: ``<slurp_id>_<recording file stem>`` (a recording is unique);
* ``duration``: seconds, from the FLAC header (``soundfile.info``), at the
  file's own sample rate;
* ``wav``: the absolute path of the FLAC file;
* ``scenario``: one of SLURP's 18 scenarios (``alarm``, ``iot``, ...);
* ``action``: the action (``set``, ``hue_lightoff``, ...);
* ``intent``: ``<scenario>_<action>``. It is rebuilt from the two fields:
  SLURP's own ``intent`` field is sometimes only the action (e.g.
  ``hue_lightoff`` instead of ``iot_hue_lightoff``);
* ``semantics``: JSON of ``{"scenario", "action", "entities": [{"type",
  "filler"}]}`` (the entities of ``sentence_annotation``), as SpeechBrain's
  SLU recipes keep it;
* ``transcript``: the sentence.

"Real recordings only" (the MP3S protocol): the synthetic recordings
(``train_synthetic.jsonl``, ``slurp_synth/``) are never used.

The expected layout is a clone of the SLURP repository with its audio
extracted in ``audio/`` (``scripts/download_audio.sh`` then ``tar -xzf
audio/slurp_real.tar.gz -C audio``)::

    <data_folder>/dataset/slurp/{train,devel,test}.jsonl
    <data_folder>/audio/slurp_real/audio-<id>[-headset].flac

``<data_folder>/slurp_real/`` and jsonl files directly in ``<data_folder>``
(SpeechBrain's SLURP layout) are found too.

A corrupt recording stops the preparation with a message naming it. With
``check_audio`` every file is decoded once, in parallel, so that a truncated
one is found now rather than during training; with ``skip_bad_audio`` such
files are left out and counted instead (``lobes.dataio.audio.scan_audio``; list in
``<save_folder>/bad_audio_<split>.txt``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
import re
from pathlib import Path

from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.dataio.manifest import write_csv
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
SPLITS = ("train", "devel", "test")
HEADER = ["ID", "duration", "wav", "scenario", "action", "intent", "semantics", "transcript"]
OPTS_FILE = "slurp_prepare.json"
DOWNLOAD_HINT = (
    "Clone https://github.com/pswietojanski/slurp (the annotations are in "
    "dataset/slurp/), run its scripts/download_audio.sh, extract "
    "audio/slurp_real.tar.gz into audio/ and pass the clone as data_folder "
    "(--data_folder=/path/to/slurp)."
)
ENTITY = re.compile(r"\[\s*([^:\]]+?)\s*:\s*([^\]]*?)\s*\]")


def prepare_slurp(
    data_folder,
    save_folder,
    splits=SPLITS,
    skip_prep=False,
    num_workers=16,
    check_audio=False,
    skip_bad_audio=False,
):
    """Writes ``<save_folder>/<split>.csv`` for each SLURP split.

    A CSV made before from the same data folder (recorded in
    ``<save_folder>/slurp_prepare.json``) is not made again.

    Arguments
    ---------
    data_folder : str
        The SLURP folder (see the module docstring for the layout).
    save_folder : str
        Where the CSV files go (created if needed).
    splits : sequence of str
        Among ``train``, ``devel``, ``test``.
    skip_prep : bool
        If True, do nothing.
    num_workers : int
        Threads reading the audio headers (or decoding the files).
    check_audio : bool
        Decode every file fully to find truncated or corrupt ones now rather
        than during training.
    skip_bad_audio : bool
        Leave unreadable/truncated files out (counted in the log) instead of
        stopping.

    Raises
    ------
    FileNotFoundError
        ``data_folder``, a jsonl file or an audio file is missing.
    ValueError
        A jsonl line is not a SLURP entry.
    lobes.dataio.audio.BadAudioError
        Unreadable (corrupt, truncated) audio files, all named, unless
        ``skip_bad_audio``.

    Example
    -------
    >>> prepare_slurp("/nonexistent", "/tmp/out")
    Traceback (most recent call last):
    ...
    FileNotFoundError: SLURP data folder /nonexistent does not exist...
    """
    if skip_prep:
        return
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"SLURP data folder {data_folder} does not exist (data_folder). {DOWNLOAD_HINT}"
        )
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"Unknown SLURP splits {sorted(unknown)}: choose from {SPLITS}.")
    save_folder.mkdir(parents=True, exist_ok=True)
    record = {
        "data_folder": str(data_folder.resolve()),
        "version": 1,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    opts_path = save_folder / OPTS_FILE
    done = json.loads(opts_path.read_text()) if opts_path.is_file() else {}
    audio_folder = _find(data_folder, ["audio/slurp_real", "slurp_real"], "slurp_real audio folder")
    for split in splits:
        csv_path = save_folder / f"{split}.csv"
        if csv_path.is_file() and done.get(split) == record:
            logger.info(f"{csv_path} exists, skipping its preparation.")
            continue
        jsonl = _find(
            data_folder, [f"dataset/slurp/{split}.jsonl", f"{split}.jsonl"], f"{split}.jsonl"
        )
        rows = split_rows(
            jsonl, audio_folder, num_workers, check_audio, skip_bad_audio,
            report_file=save_folder / f"bad_audio_{split}.txt",
        )
        _write_csv(csv_path, rows)
        logger.info(f"Wrote {csv_path} ({len(rows)} recordings).")
        done[split] = record
        write_text_atomic(opts_path, json.dumps(done, indent=1))


def _find(data_folder, candidates, what):
    for rel in candidates:
        if (data_folder / rel).exists():
            return data_folder / rel
    raise FileNotFoundError(
        f"No {what} in the SLURP data folder {data_folder}: looked for "
        f"{', '.join(str(data_folder / c) for c in candidates)}. {DOWNLOAD_HINT}"
    )


def parse_entities(annotation):
    """Entities of a ``sentence_annotation``, ``[{"type", "filler"}]``.

    Example
    -------
    >>> parse_entities("wake me up at [time : five am] [date : this week]")
    [{'type': 'time', 'filler': 'five am'}, {'type': 'date', 'filler': 'this week'}]
    """
    return [{"type": t, "filler": f} for t, f in ENTITY.findall(annotation)]


def split_rows(jsonl, audio_folder, num_workers=16, check_audio=False,
               skip_bad_audio=False, report_file=None):
    """CSV rows (lists in ``HEADER`` order) of the real recordings listed in
    ``jsonl``, whose files are in ``audio_folder`` (unusable files left out
    with ``skip_bad_audio``; see ``lobes.dataio.audio.scan_audio``)."""
    entries = []
    with open(jsonl, encoding="utf-8") as fin:
        for number, line in enumerate(fin, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                entries.append(
                    (obj["slurp_id"], obj["scenario"], obj["action"], obj["sentence"],
                     obj.get("sentence_annotation", obj["sentence"]),
                     [rec["file"] for rec in obj["recordings"]])
                )
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{jsonl}, line {number}: not a SLURP entry ({type(err).__name__}: "
                    f"{err}); expected the fields slurp_id, scenario, action, "
                    "sentence and recordings [{file, ...}]."
                ) from err
    jobs = [(entry, file) for entry in entries for file in entry[-1]]
    missing = [f for _, f in jobs if not (audio_folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} recordings listed in {jsonl} are not in {audio_folder} "
            f"(e.g. {', '.join(missing[:3])}): is the audio fully extracted? {DOWNLOAD_HINT}"
        )

    infos = scan_audio(
        [(audio_folder / f).resolve() for _, f in jobs], check_audio, skip_bad_audio,
        num_workers, report_file, what=f"SLURP recordings of {jsonl}",
    )
    rows = []
    for (slurp_id, scenario, action, sentence, annotation, _), file in jobs:
        path = str((audio_folder / file).resolve())
        if path not in infos:
            continue
        semantics = {"scenario": scenario, "action": action,
                     "entities": parse_entities(annotation)}
        rows.append([
            f"{slurp_id}_{Path(file).stem}", f"{infos[path].duration:.3f}", path,
            scenario, action, f"{scenario}_{action}", json.dumps(semantics), sentence,
        ])
    return rows


def _write_csv(path, rows):
    write_csv(path, HEADER, rows)  # whole or not at all
