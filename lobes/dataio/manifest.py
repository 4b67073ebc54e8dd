"""CSV manifests: written whole or not at all, checked before they are used.

Every recipe's data preparation writes its CSVs with :func:`write_csv`
(a temporary file renamed into place: a full disk or a kill leaves no
partial CSV, and a full disk stops with one message naming the folder), and
every recipe reads them with :func:`dataset_from_csv`, which first checks
them with :func:`check_manifest`: a CSV prepared earlier (reused because its
preparation record matches, or given with ``skip_prep: True``) may come from
another version, be edited by hand or point to files since moved. Missing
columns, rows of the wrong length, duplicate IDs, durations that are not
numbers and audio files that do not exist are all named, with the CSV and
the row (its line number), before any training.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import csv
import math
import os
from pathlib import Path

from lobes.utils.safe_io import atomic_file

MAX_LISTED = 10


def write_csv(path, header, rows):
    """Writes a manifest atomically: ``path`` is complete or untouched.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "train.csv"
    >>> write_csv(path, ["ID", "duration", "wav"], [["a", 1.5, "/a.wav"]])
    >>> path.read_text().splitlines()
    ['ID,duration,wav', 'a,1.5,/a.wav']
    """
    path = Path(path)
    with atomic_file(path, newline="", what=f"the manifest {path.name}") as fout:
        writer = csv.writer(fout)
        writer.writerow(header)
        writer.writerows(rows)


def _substitute(value, replacements):
    """SpeechBrain's ``$key`` replacements in a CSV value."""
    for key, repl in (replacements or {}).items():
        value = value.replace(f"${key}", str(repl))
    return value


def check_manifest(csv_path, columns=("ID", "duration", "wav"), path_columns=("wav",),
                   number_columns=("duration",), replacements=None, check_files=True):
    """Refuses a manifest this recipe cannot train on, naming the CSV and
    the rows.

    Arguments
    ---------
    csv_path : str or Path
        The CSV.
    columns : sequence of str
        Columns the recipe reads (``ID`` always).
    path_columns : sequence of str
        Columns holding audio file paths: each must exist.
    number_columns : sequence of str
        Columns holding numbers (durations, sample bounds).
    replacements : dict, optional
        SpeechBrain's ``$key`` replacements of ``from_csv``.
    check_files : bool
        Check that the audio files exist.

    Raises
    ------
    FileNotFoundError
        No such CSV.
    ValueError
        Each problem with its row (line number), up to ten, and how many.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> wav = folder / "a.wav"
    >>> _ = wav.write_bytes(b"")
    >>> csv_file = folder / "train.csv"
    >>> _ = csv_file.write_text(f"ID,duration,wav\\na,1.0,{wav}\\na,2.0,{folder}/b.wav\\n")
    >>> check_manifest(csv_file)
    Traceback (most recent call last):
    ...
    ValueError: .../train.csv (a manifest prepared earlier) cannot be used: row 3: ID 'a' already in row 2; row 3: .../b.wav does not exist. ...
    >>> _ = csv_file.write_text(f"ID,wav\\na,{wav}\\n")
    >>> check_manifest(csv_file)
    Traceback (most recent call last):
    ...
    ValueError: .../train.csv (a manifest prepared earlier) cannot be used: no column duration (its columns: ID, wav). ...
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"Manifest {csv_path} does not exist: run the data preparation "
            "(skip_prep: False), or give the CSV of a finished preparation."
        )
    problems, count = [], 0

    def problem(text):
        nonlocal count
        count += 1
        if len(problems) < MAX_LISTED:
            problems.append(text)

    with open(csv_path, newline="", encoding="utf-8") as fin:
        reader = csv.reader(fin, skipinitialspace=True)
        header = next(reader, None)
        if not header:
            raise ValueError(_message(csv_path, ["the file is empty (no header)"], 1))
        header = [h.strip() for h in header]
        wanted = ["ID", *[c for c in columns if c != "ID"]]
        missing = [c for c in wanted if c not in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if missing or duplicated:
            found = []
            if missing:
                found.append(
                    f"no column {', '.join(missing)} (its columns: {', '.join(header)})"
                )
            if duplicated:
                found.append(f"column(s) {', '.join(duplicated)} appear twice")
            raise ValueError(_message(csv_path, found, len(found)))
        index = {name: header.index(name) for name in header}
        seen, files = {}, {}
        for line, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                problem(f"row {line}: {len(row)} values for {len(header)} columns")
                continue
            uid = row[index["ID"]]
            if uid in seen:
                problem(f"row {line}: ID {uid!r} already in row {seen[uid]}")
            else:
                seen[uid] = line
            for name in number_columns:
                if name in index:
                    value = row[index[name]]
                    try:
                        ok = math.isfinite(float(value))
                    except ValueError:
                        ok = False
                    if not ok:
                        problem(f"row {line}: {name} {value!r} is not a number")
            if check_files:
                for name in path_columns:
                    if name in index:
                        path = _substitute(row[index[name]], replacements)
                        if path not in files:
                            files[path] = os.path.exists(path)
                        if not files[path]:
                            problem(f"row {line}: {path} does not exist")
        if not seen:
            raise ValueError(_message(csv_path, ["it has no row"], 1))
    if count:
        raise ValueError(_message(csv_path, problems, count))


def _message(csv_path, problems, count):
    more = f" (and {count - len(problems)} more)" if count > len(problems) else ""
    return (
        f"{csv_path} (a manifest prepared earlier) cannot be used: "
        + "; ".join(problems) + more + ". Delete it (and the preparation "
        "record beside it, *_prepare.json) so that the preparation writes it "
        "again, or correct it."
    )


def dataset_from_csv(csv_path, columns=("ID", "duration", "wav"), replacements=None, **checks):
    """``DynamicItemDataset.from_csv`` after :func:`check_manifest`."""
    import speechbrain as sb

    check_manifest(csv_path, columns, replacements=replacements, **checks)
    return sb.dataio.dataset.DynamicItemDataset.from_csv(
        csv_path=str(csv_path), replacements=replacements or {}
    )

