"""Data preparation for LibriLight (https://github.com/facebookresearch/libri-light).

LibriLight's unlabelled splits (``small``, ``medium``, ``large``) hold long
audiobook chapters, ``<split>/<speaker>/<book>/<file>.flac``, each with a
``<file>.json`` whose ``voice_activity`` lists speech intervals
``[[start_s, end_s], ...]``. Pretraining needs utterance-sized inputs, so each
file is cut into segments of at most ``max_segment_duration`` seconds: the
voice-activity intervals are merged in order while the segment stays under the
limit (a new segment starts at a silence), and an interval longer than the
limit is split evenly. Files without metadata or voice activity are cut into
fixed windows of ``max_segment_duration``.

The CSV has ``ID, duration, wav, start, stop, spk_id``, with start/stop in
samples, read by ``lobes.dataio.load_audio`` without cutting the files.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import csv
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]


def segment_voice_activity(intervals, total, max_dur, min_dur):
    """Groups voice-activity intervals into segments of at most ``max_dur``.

    Arguments
    ---------
    intervals : list of (float, float)
        Speech intervals in seconds, in order.
    total : float
        Duration of the file (s).
    max_dur, min_dur : float
        Longest and shortest segment kept (s).

    Returns
    -------
    list of (float, float)
        Segments (start, end) in seconds.

    Example
    -------
    >>> segment_voice_activity([[0, 4], [5, 9], [10, 30]], 31, 10.0, 1.0)
    [(0, 9), (10, 20.0), (20.0, 30)]
    """
    if not intervals:
        intervals = [[0.0, total]]
    pieces = []
    for start, end in intervals:
        end = min(end, total)
        n = max(1, math.ceil((end - start) / max_dur))
        step = (end - start) / n
        pieces += [
            (start + i * step if i else start, start + (i + 1) * step if i < n - 1 else end)
            for i in range(n)
        ]
    segments, cur = [], None
    for start, end in pieces:
        if cur is not None and end - cur[0] <= max_dur:
            cur = (cur[0], end)
        else:
            if cur is not None:
                segments.append(cur)
            cur = (start, end)
    if cur is not None:
        segments.append(cur)
    return [s for s in segments if s[1] - s[0] >= min_dur]


def prepare_librilight(
    data_folder,
    save_folder,
    splits=("small",),
    max_segment_duration=30.0,
    min_segment_duration=2.0,
    skip_prep=False,
    csv_name="train.csv",
    num_workers=16,
):
    """Writes ``<save_folder>/<csv_name>`` with VAD-aligned segments.

    Arguments
    ---------
    data_folder : str
        Folder holding the LibriLight splits (``small/``, ``medium/``, ...).
    save_folder : str
        Where the CSV goes.
    splits : list of str
        Splits to use.
    max_segment_duration, min_segment_duration : float
        Segment length bounds in seconds.
    skip_prep : bool
        Do nothing.
    csv_name : str
        File name of the CSV.
    num_workers : int
        Threads reading audio headers.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> root = make_demo_corpus("demo_data", ["librilight"])["librilight"]
    >>> out = tempfile.mkdtemp()
    >>> prepare_librilight(root, out, max_segment_duration=10.0)
    >>> open(os.path.join(out, "train.csv")).readline().strip()
    'ID,duration,wav,start,stop,spk_id'
    """
    if skip_prep:
        return
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"LibriLight data folder {data_folder} does not exist. Download the "
            "splits (small.tar, medium.tar, large.tar) from "
            "https://github.com/facebookresearch/libri-light and pass the folder "
            "that holds small/, medium/, ... as --data_folder."
        )
    save_folder = Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    csv_file = save_folder / csv_name
    if csv_file.exists():
        logger.info(f"{csv_file} exists, skipping its preparation.")
        return
    flacs = []
    for split in splits:
        split_dir = data_folder / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"LibriLight split folder {split_dir} does not exist: extract "
                f"{split}.tar into {data_folder} or remove it from train_splits."
            )
        found = sorted(split_dir.rglob("*.flac"))
        if not found:
            raise ValueError(f"No .flac file under {split_dir}.")
        flacs += found

    def rows_of(flac):
        try:
            info = sf.info(str(flac))
        except Exception as err:
            raise ValueError(f"Cannot read audio file {flac} ({err}): re-extract or delete it.") from err
        meta_file = flac.with_suffix(".json")
        vad = []
        if meta_file.exists():
            vad = json.loads(meta_file.read_text()).get("voice_activity") or []
        sr = info.samplerate
        segments = segment_voice_activity(vad, info.duration, max_segment_duration, min_segment_duration)
        spk = flac.relative_to(data_folder).parts[1]
        return [
            [f"{spk}_{flac.stem}_{i:04d}", round(end - start, 3), str(flac.resolve()),
             int(start * sr), int(end * sr), spk]
            for i, (start, end) in enumerate(segments)
        ]

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        rows = [row for rows in pool.map(rows_of, flacs) for row in rows]
    tmp = csv_file.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    os.replace(tmp, csv_file)
    logger.info(f"{csv_file}: {len(rows)} segments from {len(flacs)} files, "
                f"{sum(r[1] for r in rows) / 3600:.2f} h")
