"""Data preparation for LibriSpeech (https://www.openslr.org/12).

Writes one SpeechBrain CSV manifest per split, ``<save_folder>/<split>.csv``,
with the columns ``ID, duration, wav, spk_id, wrd``:

* ``ID``: the utterance id (``<speaker>-<chapter>-<NNNN>``),
* ``duration``: seconds, from the FLAC header (``soundfile.info``) at the
  file's own sample rate,
* ``wav``: the **absolute** path of the FLAC file (so the CSVs work from any
  working directory; move the corpus and you must prepare again),
* ``spk_id``: the speaker id,
* ``wrd``: the transcript, as in the ``*.trans.txt`` files (upper case).

and optionally the concatenation of several splits (e.g. the 960 h training
set) into ``<save_folder>/<merge_name>``. Every recipe that needs this
script imports it from here (``lobes.dataio.librispeech_prepare``).

With ``check_audio`` every file is decoded once, in parallel, so that a
truncated or corrupt file stops the preparation (naming it) instead of the
training hours later; with ``skip_bad_audio`` such files are left out and
counted instead (``lobes.dataio.audio.scan_audio``; their list is written to
``<save_folder>/bad_audio_<split>.txt``).

The expected layout is LibriSpeech's own::

    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import csv
import json
import os
from pathlib import Path

from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.dataio.manifest import write_csv
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]
OPTS_FILE = "librispeech_prepare.json"
DOWNLOAD_HINT = (
    "Download LibriSpeech from https://www.openslr.org/12 (e.g. "
    "train-clean-100.tar.gz, dev-clean.tar.gz), extract the archives (they "
    "all unpack into one LibriSpeech/ folder) and pass that LibriSpeech/ "
    "folder as data_folder (--data_folder=/path/to/LibriSpeech)."
)


def prepare_librispeech(
    data_folder,
    save_folder,
    tr_splits=[],
    dev_splits=[],
    te_splits=[],
    merge_lst=[],
    merge_name=None,
    skip_prep=False,
    min_duration=None,
    select_n_sentences=None,
    num_workers=16,
    check_audio=False,
    skip_bad_audio=False,
):
    """Writes ``<save_folder>/<split>.csv`` for each requested LibriSpeech split.

    A CSV that already exists and was made from the same data folder with the
    same options (recorded in ``<save_folder>/librispeech_prepare.json``) is
    not made again; when every requested CSV is up to date the whole
    preparation is skipped (SpeechBrain's usual ``skip`` convention).

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder holding the split folders
        (``train-clean-100``, ``dev-clean``, ...). Its parent works too.
    save_folder : str
        Where the CSV files go (created if needed).
    tr_splits, dev_splits, te_splits : list of str
        Splits to prepare (e.g. ``["train-clean-100", "train-clean-360",
        "train-other-500"]``, ``["dev-clean"]``, ``["test-clean"]``).
    merge_lst : list of str
        Splits (prepared now or before, in ``save_folder``) to concatenate
        into ``<save_folder>/<merge_name>``.
    merge_name : str, optional
        File name of the merged CSV (e.g. ``train.csv``).
    skip_prep : bool
        Do nothing (the CSVs are already there).
    min_duration : float, optional
        Leave out utterances shorter than this many seconds.
    select_n_sentences : int, optional
        Keep only the first ``select_n_sentences`` utterances (sorted by ID) of
        each split: for quick debugging runs.
    num_workers : int
        Threads reading the audio headers (durations) or decoding the files
        (``check_audio``); LibriSpeech 960 h has 281k files.
    check_audio : bool
        Decode every file fully to find truncated or corrupt ones now rather
        than during training.
    skip_bad_audio : bool
        Leave unreadable/truncated files out (counted in the log, listed in
        ``<save_folder>/bad_audio_<split>.txt``) instead of stopping.

    Raises
    ------
    FileNotFoundError
        Missing data folder or split folder, or a split to merge that has no
        CSV.
    ValueError
        A split without FLAC files or a FLAC without transcript line; the
        message names the file.
    lobes.dataio.audio.BadAudioError
        Unreadable (corrupt, truncated) audio files, all named, unless
        ``skip_bad_audio``.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> data = make_demo_corpus("demo_data", ["librispeech"])["librispeech"]
    >>> out = tempfile.mkdtemp()
    >>> prepare_librispeech(data, out, tr_splits=["train-clean-100"],
    ...     dev_splits=["dev-clean"], merge_lst=["train-clean-100"],
    ...     merge_name="train.csv")
    >>> open(os.path.join(out, "dev-clean.csv")).readline().strip()
    'ID,duration,wav,spk_id,wrd'
    """
    if skip_prep:
        logger.info("skip_prep: LibriSpeech preparation skipped.")
        return
    data_folder = _find_data_folder(Path(data_folder))
    save_folder = Path(save_folder)
    splits = list(dict.fromkeys(list(tr_splits) + list(dev_splits) + list(te_splits)))
    opts = {
        "data_folder": str(data_folder.resolve()),
        "min_duration": min_duration,
        "select_n_sentences": select_n_sentences,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    done = _load_opts(save_folder)

    def up_to_date(name, record):
        return (save_folder / name).exists() and done.get(name) == record

    merge_record = {**opts, "merge_lst": list(merge_lst)}
    todo = [s for s in splits if not up_to_date(f"{s}.csv", opts)]
    merge_todo = bool(merge_lst and merge_name) and (
        not up_to_date(merge_name, merge_record) or any(s in todo for s in merge_lst)
    )
    if not todo and not merge_todo:
        logger.info(
            f"LibriSpeech CSVs for {splits}"
            + (f" and {merge_name}" if merge_lst and merge_name else "")
            + f" already in {save_folder}: skipping preparation."
        )
        return

    save_folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        csv_file = save_folder / f"{split}.csv"
        if split not in todo:
            logger.info(f"{csv_file} exists: skipping the preparation of {split}.")
            continue
        rows = _split_rows(
            data_folder, split, num_workers, check_audio, skip_bad_audio,
            report_file=save_folder / f"bad_audio_{split}.txt",
        )
        if min_duration is not None:
            kept = [r for r in rows if r[1] >= min_duration]
            if len(kept) < len(rows):
                logger.info(
                    f"{split}: {len(rows) - len(kept)} utterances shorter than "
                    f"{min_duration} s left out."
                )
            rows = kept
        if select_n_sentences is not None:
            rows = rows[: int(select_n_sentences)]
        _write_csv(csv_file, rows)
        done[csv_file.name] = opts
        _save_opts(save_folder, done)
        logger.info(
            f"{csv_file}: {len(rows)} utterances, {sum(r[1] for r in rows) / 3600:.2f} h"
        )

    if merge_lst and merge_name:
        merge_csvs(save_folder, merge_lst, merge_name)
        done[merge_name] = merge_record
        _save_opts(save_folder, done)


def prepare_from_hparams(hparams, test_splits=True):
    """Runs :func:`prepare_librispeech` on the main process with a recipe's
    hyperparameters: ``data_folder``, ``train_splits`` (prepared and merged
    into ``<output_folder>/train.csv``), ``dev_splits``, ``test_splits``
    (unless ``test_splits`` is False: pretraining has none), ``skip_prep``,
    ``check_audio`` and ``skip_bad_audio``; the CSVs go to
    ``output_folder``.

    Arguments
    ---------
    hparams : dict
        The recipe's loaded hyperparameters.
    test_splits : bool
        Prepare ``hparams["test_splits"]`` too.
    """
    from speechbrain.utils.distributed import run_on_main

    run_on_main(
        prepare_librispeech,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "tr_splits": hparams["train_splits"],
            "dev_splits": hparams["dev_splits"],
            "te_splits": hparams["test_splits"] if test_splits else [],
            "merge_lst": hparams["train_splits"],
            "merge_name": "train.csv",
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )


def merge_csvs(save_folder, merge_lst, merge_name):
    """Concatenates ``<save_folder>/<split>.csv`` for ``split`` in
    ``merge_lst`` into ``<save_folder>/<merge_name>`` (one header)."""
    save_folder = Path(save_folder)
    rows = []
    for split in merge_lst:
        split_csv = save_folder / f"{split}.csv"
        if not split_csv.exists():
            raise FileNotFoundError(
                f"Cannot merge {split}: {split_csv} does not exist. Add {split!r} "
                "to the splits to prepare (e.g. train_splits in the YAML)."
            )
        with open(split_csv, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            if header != HEADER:
                raise ValueError(f"{split_csv} has columns {header}, expected {HEADER}.")
            rows += list(reader)
    merged = save_folder / merge_name
    _write_csv(merged, rows)
    logger.info(f"{merged}: {len(rows)} utterances from {list(merge_lst)}")


def _find_data_folder(data_folder):
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech data folder {data_folder} does not exist. {DOWNLOAD_HINT}"
        )
    # Accept the folder that holds LibriSpeech/ (where the archives were extracted).
    nested = data_folder / "LibriSpeech"
    if nested.is_dir() and not any(
        p.name.startswith(("train-", "dev-", "test-")) for p in data_folder.iterdir()
    ):
        logger.info(f"Using {nested} (the LibriSpeech folder inside {data_folder}).")
        return nested
    return data_folder


def _load_opts(save_folder):
    """Options each CSV of ``save_folder`` was made with: {csv name: options}."""
    try:
        return json.loads((Path(save_folder) / OPTS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_opts(save_folder, done):
    write_text_atomic(Path(save_folder) / OPTS_FILE, json.dumps(done, indent=1))


def _split_rows(data_folder, split, num_workers, check_audio=False,
                skip_bad_audio=False, report_file=None):
    """CSV rows ``[ID, duration, wav, spk_id, wrd]`` of one split, sorted by
    ID (unusable audio files left out with ``skip_bad_audio``)."""
    split_dir = data_folder / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in data_folder.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"LibriSpeech split folder {split_dir} does not exist (found: "
            f"{', '.join(found) or 'nothing'} in {data_folder}). Download "
            f"{split}.tar.gz from https://www.openslr.org/12 and extract it "
            f"next to the other splits, or remove {split!r} from the splits to prepare."
        )
    flacs, trans_files = [], []
    for dirpath, _, filenames in os.walk(split_dir, followlinks=True):
        for name in filenames:
            if name.endswith(".flac"):
                flacs.append(os.path.join(dirpath, name))
            elif name.endswith(".trans.txt"):
                trans_files.append(os.path.join(dirpath, name))
    if not flacs:
        raise ValueError(
            f"No .flac file under {split_dir}: is {split}.tar.gz fully extracted? {DOWNLOAD_HINT}"
        )
    transcripts = {}
    for trans in trans_files:
        with open(trans, encoding="utf-8") as f:
            for line in f:
                utt, _, words = line.strip().partition(" ")
                if utt:
                    transcripts[utt] = words.strip()

    for flac in flacs:
        utt = os.path.basename(flac)[: -len(".flac")]
        if utt not in transcripts:
            chapter_trans = "-".join(utt.split("-")[:2]) + ".trans.txt"
            raise ValueError(
                f"{flac} has no transcript: no line starting with {utt!r} in "
                f"{os.path.join(os.path.dirname(flac), chapter_trans)}. Re-extract "
                f"{split}.tar.gz, or delete the audio file."
            )

    logger.info(f"Reading {len(flacs)} audio headers of {split} ...")
    infos = scan_audio(
        sorted(flacs), check_audio, skip_bad_audio, num_workers, report_file,
        what=f"LibriSpeech {split} (re-extract {split}.tar.gz)",
    )
    rows = []
    for flac, info in infos.items():
        utt = os.path.basename(flac)[: -len(".flac")]
        rows.append([utt, round(info.duration, 5), os.path.abspath(flac),
                     utt.split("-")[0], transcripts[utt]])
    rows.sort(key=lambda r: r[0])
    return rows


def _write_csv(path, rows):
    """Writes the CSV atomically (a killed run or a full disk leaves no
    partial CSV; a full disk stops with one message)."""
    write_csv(path, HEADER, rows)
