"""Data preparation for LibriSpeech (https://www.openslr.org/12).

Writes one SpeechBrain CSV manifest per split with the columns
``ID, duration, wav, spk_id, wrd`` (``wav`` is an absolute path), and
optionally a merge of several splits (e.g. the 960 h training set).
Every recipe folder that needs it links to this one file.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]


def prepare_librispeech(
    data_folder,
    save_folder,
    tr_splits=(),
    dev_splits=(),
    te_splits=(),
    merge_lst=(),
    merge_name=None,
    skip_prep=False,
    num_workers=16,
):
    """Writes ``<save_folder>/<split>.csv`` for each LibriSpeech split.

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder holding the split folders
        (``train-clean-100``, ``dev-clean``, ...).
    save_folder : str
        Where the CSV files go.
    tr_splits, dev_splits, te_splits : list of str
        Splits to prepare.
    merge_lst : list of str
        Splits to concatenate into ``<save_folder>/<merge_name>``.
    merge_name : str, optional
        File name of the merged CSV (e.g. ``train.csv``).
    skip_prep : bool
        Do nothing (the CSVs are already there).
    num_workers : int
        Threads reading audio headers (durations).

    Raises
    ------
    FileNotFoundError
        Missing data folder or split folder.
    ValueError
        A split without FLAC files, a FLAC without transcript, unreadable audio.

    Example
    -------
    >>> import tempfile, sys
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> data = make_demo_corpus("demo_data", ["librispeech"])["librispeech"]
    >>> out = tempfile.mkdtemp()
    >>> prepare_librispeech(data, out, dev_splits=["dev-clean"])
    >>> open(os.path.join(out, "dev-clean.csv")).readline().strip()
    'ID,duration,wav,spk_id,wrd'
    """
    if skip_prep:
        return
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech data folder {data_folder} does not exist. Download "
            "the corpus from https://www.openslr.org/12 and pass the folder "
            "that holds train-clean-100/, dev-clean/, ... as --data_folder."
        )
    save_folder = Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    splits = list(tr_splits) + list(dev_splits) + list(te_splits)
    for split in splits:
        csv_file = save_folder / f"{split}.csv"
        if csv_file.exists():
            logger.info(f"{csv_file} exists, skipping its preparation.")
            continue
        rows = _split_rows(data_folder, split, num_workers)
        _write_csv(csv_file, rows)
        logger.info(f"{csv_file}: {len(rows)} utterances, "
                    f"{sum(r[1] for r in rows) / 3600:.2f} h")
    if merge_lst and merge_name:
        merged = save_folder / merge_name
        rows = []
        for split in merge_lst:
            with open(save_folder / f"{split}.csv", newline="") as f:
                rows += [list(r.values()) for r in csv.DictReader(f)]
        _write_csv(merged, rows)
        logger.info(f"{merged}: {len(rows)} utterances from {list(merge_lst)}")


def _split_rows(data_folder, split, num_workers):
    split_dir = data_folder / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech split folder {split_dir} does not exist. Download "
            f"{split}.tar.gz from https://www.openslr.org/12 and extract it "
            f"into {data_folder}, or remove {split!r} from the YAML's splits."
        )
    flacs = sorted(split_dir.rglob("*.flac"))
    if not flacs:
        raise ValueError(f"No .flac file under {split_dir}: is the archive fully extracted?")
    transcripts = {}
    for trans in split_dir.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            if line.strip():
                utt, _, words = line.partition(" ")
                transcripts[utt] = words.strip()

    def row(flac):
        utt = flac.stem
        if utt not in transcripts:
            raise ValueError(
                f"{flac} has no transcript line in its chapter's .trans.txt file."
            )
        try:
            duration = sf.info(str(flac)).duration
        except Exception as err:
            raise ValueError(
                f"Cannot read audio file {flac} ({err}): re-extract it or delete it."
            ) from err
        return [utt, round(duration, 3), str(flac.resolve()), utt.split("-")[0], transcripts[utt]]

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        return list(pool.map(row, flacs))


def _write_csv(path, rows):
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    os.replace(tmp, path)
