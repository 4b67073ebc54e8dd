"""Data preparation for LibriLight (https://github.com/facebookresearch/libri-light).

LibriLight's unlabelled audio comes as long LibriVox recordings (often 10-60
minutes), in the layout of facebookresearch/libri-light's
``data_preparation/README.md``::

    <data_folder>/<split>/<speakerID>/<book_name>/<file>.flac
    <data_folder>/<split>/<speakerID>/<book_name>/<file>.json

with ``split`` one of ``small`` (577 h), ``medium`` (5193 h), ``large``
(51934 h) or ``duplicate``, and one JSON per audio file holding ``speaker``,
``book_meta``, ``snr`` and ``voice_activity``: the onsets and offsets in
seconds of its voice-activity (VAD) segments, ``[[0.4, 12.32], ...]``.

Instead of writing cut copies of the audio (as libri-light's own
``cut_by_vad.py`` does), this script writes a SpeechBrain CSV of *segments*
of the long files, ``<save_folder>/train.csv`` with the columns
``ID, duration, wav, start, stop, spk_id``: ``wav`` is the absolute path of
the long FLAC file and ``start``/``stop`` are sample indices (stop
exclusive, at the file's own sample rate, 16 kHz for LibriLight), which
``speechbrain.dataio.dataio.read_audio({"file": wav, "start": start,
"stop": stop})`` reads without loading the whole file.

Segmentation (per file): consecutive VAD segments are merged greedily into
segments spanning at most ``max_segment_duration`` seconds from the onset of
their first VAD segment to the offset of their last one (the short silences
between merged VAD segments stay in, unlike ``cut_by_vad.py`` which
concatenates only the voiced parts); a single VAD segment longer than
``max_segment_duration`` is cut into equal parts no longer than it;
segments shorter than ``min_segment_duration`` are left out. A file without
JSON, or whose JSON has no (or an empty) ``voice_activity``, is cut into
equal windows of at most ``max_segment_duration`` seconds over the whole
file (a warning says how many files this happened to).

Audio check: with ``check_audio`` every long file is decoded once, in
parallel, so that a truncated or corrupt file stops the preparation (naming
it) instead of the training; with ``skip_bad_audio`` such files are left out
and counted instead (``lobes.dataio.audio.scan_audio``; their list is written to
``<save_folder>/bad_audio_librilight_<split>.txt``).

Validation: the LibriLight recipe validates on LibriSpeech ``dev-clean``,
prepared by ``lobes.dataio.librispeech_prepare`` (LibriLight has no dev split of its
own; its speakers exclude LibriSpeech's dev/test speakers).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.dataio.manifest import write_csv
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
OPTS_FILE = "librilight_prepare.json"
DOWNLOAD_HINT = (
    "Download LibriLight's unlabelled audio from "
    "https://github.com/facebookresearch/libri-light (data_preparation/README.md: "
    "https://dl.fbaipublicfiles.com/librilight/data/small.tar, medium.tar, "
    "large.tar), extract the archives into one folder (which then holds "
    "small/, medium/, large/) and pass that folder as data_folder "
    "(--data_folder=/path/to/librilight)."
)


def prepare_librilight(
    data_folder,
    save_folder,
    splits=["small"],
    max_segment_duration=30.0,
    min_segment_duration=2.0,
    skip_prep=False,
    csv_name="train.csv",
    num_workers=16,
    check_audio=False,
    skip_bad_audio=False,
):
    """Writes ``<save_folder>/<csv_name>``: VAD-based segments of LibriLight.

    Arguments
    ---------
    data_folder : str
        The folder holding the split folders (``small/``, ``medium/``,
        ``large/``).
    save_folder : str
        Where the CSV goes (created if needed).
    splits : list of str
        Split folders to use, e.g. ``["small", "medium", "large"]``.
    max_segment_duration : float
        Longest segment, in seconds.
    min_segment_duration : float
        Segments shorter than this (seconds) are left out.
    skip_prep : bool
        Do nothing (the CSV is already there).
    csv_name : str
        File name of the CSV.
    num_workers : int
        Threads reading the audio headers and JSON files (or decoding the
        audio, ``check_audio``).
    check_audio : bool
        Decode every file fully to find truncated or corrupt ones now rather
        than during training (reads the whole corpus once).
    skip_bad_audio : bool
        Leave unreadable/truncated files out (counted in the log, listed in
        ``<save_folder>/bad_audio_librilight_<split>.txt``) instead of
        stopping.

    Raises
    ------
    FileNotFoundError
        Missing data folder or split folder.
    ValueError
        Bad durations, a split without FLAC files, an unreadable JSON file
        (the message names the file).
    lobes.dataio.audio.BadAudioError
        Unreadable (corrupt, truncated) audio files, all named, unless
        ``skip_bad_audio``.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> data = make_demo_corpus("demo_data", ["librilight"])["librilight"]
    >>> out = tempfile.mkdtemp()
    >>> prepare_librilight(data, out, splits=["small"], max_segment_duration=20.0)
    >>> open(os.path.join(out, "train.csv")).readline().strip()
    'ID,duration,wav,start,stop,spk_id'
    """
    if skip_prep:
        logger.info("skip_prep: LibriLight preparation skipped.")
        return
    if not 0 <= min_segment_duration < max_segment_duration:
        raise ValueError(
            f"Need 0 <= min_segment_duration < max_segment_duration, got "
            f"{min_segment_duration} and {max_segment_duration}."
        )
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"LibriLight data folder {data_folder} does not exist. {DOWNLOAD_HINT}")
    save_folder = Path(save_folder)
    csv_file = save_folder / csv_name
    opts = {
        "data_folder": str(data_folder.resolve()),
        "splits": list(splits),
        "max_segment_duration": max_segment_duration,
        "min_segment_duration": min_segment_duration,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    if csv_file.exists() and _load_opts(save_folder).get(csv_name) == opts:
        logger.info(f"{csv_file} already made with the same options: skipping preparation.")
        return

    rows, n_files, n_fallback, n_dropped, total = [], 0, 0, 0, 0.0
    for split in splits:
        files = _list_flacs(data_folder, split)
        n_files += len(files)
        infos = scan_audio(
            files, check_audio, skip_bad_audio, num_workers,
            report_file=save_folder / f"bad_audio_librilight_{split}.txt",
            what=f"LibriLight {split} (re-extract {split}.tar)",
        )
        logger.info(f"LibriLight {split}: segmenting {len(infos)} files ...")
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            results = pool.map(
                lambda f: _segment_file(
                    f, infos[f], data_folder / split, split, max_segment_duration,
                    min_segment_duration,
                ),
                infos,
            )
            for file_rows, fallback, dropped, duration in results:
                rows += file_rows
                n_fallback += fallback
                n_dropped += dropped
                total += duration
    ids = set()
    for row in rows:
        if row[0] in ids:
            raise ValueError(f"Two segments share the ID {row[0]!r}: is a file listed twice?")
        ids.add(row[0])
    if n_fallback:
        logger.warning(
            f"{n_fallback} of {n_files} files had no voice activity (no .json, or no "
            "'voice_activity' in it): cut into fixed windows instead."
        )
    kept = sum(r[1] for r in rows)
    logger.info(
        f"{csv_file}: {len(rows)} segments ({kept / 3600:.2f} h of {total / 3600:.2f} h "
        f"in {n_files} files; {n_dropped} segments shorter than {min_segment_duration} s left out)"
    )
    if not rows:
        raise ValueError(
            f"No segment of at least {min_segment_duration} s in {splits} under "
            f"{data_folder}: check the voice_activity of the .json files or min_segment_duration."
        )
    save_folder.mkdir(parents=True, exist_ok=True)
    write_csv(csv_file, HEADER, rows)  # whole or not at all
    done = _load_opts(save_folder)
    done[csv_name] = opts
    write_text_atomic(save_folder / OPTS_FILE, json.dumps(done, indent=1))


def segment_boundaries(vad, file_duration, max_segment_duration, min_segment_duration):
    """Merges VAD segments into segments of at most ``max_segment_duration`` s.

    Arguments
    ---------
    vad : list of (float, float) or None
        Voice-activity onsets/offsets in seconds; ``None`` or empty: cut the
        whole file into equal windows.
    file_duration : float
        Seconds; VAD segments are clipped to it.
    max_segment_duration, min_segment_duration : float
        Seconds.

    Returns
    -------
    segments : list of (float, float)
        Start and end (seconds) of each kept segment.
    dropped : int
        How many segments were shorter than ``min_segment_duration``.

    Example
    -------
    >>> segment_boundaries([[0.5, 3.0], [3.5, 8.0], [9.0, 12.0]], 13.0, 10.0, 1.0)
    ([(0.5, 8.0), (9.0, 12.0)], 0)
    >>> segment_boundaries(None, 25.0, 10.0, 1.0)[0]
    [(0.0, 8.333333333333334), (8.333333333333334, 16.666666666666668), (16.666666666666668, 25.0)]
    """
    if not vad:
        return _equal_windows(0.0, file_duration, max_segment_duration), 0
    spans = sorted(
        (max(0.0, float(s)), min(float(e), file_duration)) for s, e in vad
    )
    spans = [(s, e) for s, e in spans if e > s]
    segments, current = [], None
    for start, end in spans:
        if end - start > max_segment_duration:
            if current:
                segments.append(current)
                current = None
            segments += _equal_windows(start, end, max_segment_duration)
        elif current is None:
            current = (start, end)
        elif max(end, current[1]) - current[0] <= max_segment_duration:
            current = (current[0], max(end, current[1]))
        else:
            segments.append(current)
            current = (start, end)
    if current:
        segments.append(current)
    kept = [(s, e) for s, e in segments if e - s >= min_segment_duration]
    return kept, len(segments) - len(kept)


def _equal_windows(start, end, max_len):
    n = max(1, math.ceil((end - start) / max_len - 1e-9))
    step = (end - start) / n
    return [(start + i * step, end if i == n - 1 else start + (i + 1) * step) for i in range(n)]


def _list_flacs(data_folder, split):
    split_dir = data_folder / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in data_folder.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"LibriLight split folder {split_dir} does not exist (found: "
            f"{', '.join(found) or 'nothing'} in {data_folder}). {DOWNLOAD_HINT} "
            f"Or remove {split!r} from the splits (train_splits in the YAML)."
        )
    flacs = []
    for dirpath, _, filenames in os.walk(split_dir, followlinks=True):
        flacs += [os.path.join(dirpath, n) for n in filenames if n.endswith(".flac")]
    if not flacs:
        raise ValueError(
            f"No .flac file under {split_dir}: is {split}.tar fully extracted? {DOWNLOAD_HINT}"
        )
    return sorted(flacs)


def _segment_file(flac, info, split_dir, split, max_len, min_len):
    """CSV rows of one long file (``info``: its ``lobes.dataio.audio.AudioInfo``);
    also (used fallback, dropped count, seconds)."""
    sr, frames = info.sample_rate, info.frames
    duration = frames / sr
    rel = Path(flac).relative_to(split_dir)  # <speaker>/<book>/<file>.flac
    spk = rel.parts[0] if len(rel.parts) > 1 else "unknown"
    vad = None
    meta_path = flac[: -len(".flac")] + ".json"
    if os.path.exists(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            vad = meta.get("voice_activity")
            spk = str(meta.get("speaker", spk))
            if vad is not None and not all(len(seg) == 2 for seg in vad):
                raise ValueError("voice_activity is not a list of [start, end] pairs")
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(
                f"Cannot read the metadata file {meta_path} ({err}): re-extract it, or "
                "delete it to cut its audio into fixed windows."
            ) from err
    segments, dropped = segment_boundaries(vad, duration, max_len, min_len)
    max_samples = int(math.floor(max_len * sr + 1e-6))
    base = "-".join([split, *rel.with_suffix("").parts])
    rows = []
    for k, (start_s, end_s) in enumerate(segments):
        start = min(int(round(start_s * sr)), frames)
        stop = min(int(round(end_s * sr)), frames, start + max_samples)
        if stop - start < min_len * sr or stop <= start:
            dropped += 1
            continue
        rows.append([f"{base}-{k:04d}", round((stop - start) / sr, 5), os.path.abspath(flac), start, stop, spk])
    return rows, not vad, dropped, duration


def _load_opts(save_folder):
    try:
        return json.loads((Path(save_folder) / OPTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
