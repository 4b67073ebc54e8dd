"""Data preparation for the Buckeye corpus (https://buckeyecorpus.osu.edu/)
with the MP3S benchmark's segmentation and split.

Buckeye is 40 speakers (``s01``-``s40``) of Columbus, Ohio, interviewed in
conversation, about 1 hour each, recorded in tracks (``s0101a``,
``s0101b``, ...) with hand-corrected word alignments. It is distributed as
one zip per speaker, each holding one zip per track::

    <data_folder>/s01.zip  ->  s01/s0101a.zip  ->  s0101a.wav    16 kHz mono
                                                   s0101a.words  word alignments
                                                   s0101a.phones, .log, .txt

The speaker zips are extracted here (the ``.wav`` and ``.words`` of each
track, into ``extract_folder``: the data folder itself unless told
otherwise, flat as MP3S's own script does); tracks already extracted, in any
sub-folder of the data or extract folder, are used as they are.

A ``.words`` file is a header ending with a line ``#``, then one line per
entry: ``<end time in s> <colour> <word>; <citation>; <phonetic>; <POS>``.
Each time is the *end* of its entry, which starts where the previous one
ended. Entries are words (``okay``, ``i'm``) or non-speech and
transcription marks: ``<SIL>``, ``<VOCNOISE>``, ``<IVER>`` (the
interviewer speaks), ``<NOISE>``, ``<LAUGH>``, ``<CUTOFF-...>``,
``{B_TRANS}``, ``{E_TRANS}``, ...

Segmentation, as MP3S (speechbrain/benchmarks ``benchmarks/MP3S/Buckeye``,
``buckeye_prepare.py``): the first entry after the header is skipped; every
entry that contains ``<`` and every ``uh`` is a *break*; the words between
two breaks form a candidate utterance, kept when it has more than two words
and when the time from its start to the end of the break that closes it is
more than ``min_duration`` (2 s; the closing break counts, as in MP3S). The
kept utterance spans from the start of its first word to the end of its
last one; its transcript is the words joined by spaces, upper-cased (MP3S's
only normalisation). Words after the last break of a track are not kept
(MP3S keeps an utterance only when a break closes it). Transcription marks
(``{...}``) end a candidate without keeping it; MP3S reads them as words,
which only ever mattered for ``{E_TRANS}``, whose utterance it then drops.

Split (MP3S): validation on speakers ``s36``, ``s37``; test on ``s38``,
``s39``, ``s40``; training on all others. (MP3S's script compares whole file
names with those prefixes when it lists the training speakers, so its
training CSV also holds every validation and test utterance; here the three
sets share no speaker, as the prefixes intend.)

Writes ``<save_folder>/{train,dev,test}.csv`` with the columns
``ID, duration, wav, start, stop, spk_id, wrd``: ``ID`` is
``<track>_<n>`` (n-th kept utterance of the track), ``wav`` the absolute
path of the track's WAV file, ``start``/``stop`` sample indices (stop
exclusive, at the file's rate) that ``lobes.dataio.audio.load_audio`` and
SpeechBrain's ``read_audio`` read as a segment, ``spk_id`` the speaker
(``s01``).

Each track's length and sample rate come from its WAV header, read once for
all tracks by ``lobes.dataio.audio.scan_audio``; a track at another rate or in
stereo keeps its real times. A corrupt track stops the preparation with a
message naming it. With ``check_audio`` every track is decoded once, in
parallel, so that a truncated one is found now rather than during training;
with ``skip_bad_audio`` such tracks are left out and counted instead (list
in ``<save_folder>/bad_audio_buckeye.txt``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import io
import json
import os
import re
import zipfile
from pathlib import Path

from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.dataio.manifest import write_csv
from lobes.utils.progress import progress
from lobes.utils.safe_io import disk_full_error, is_write_failure, write_text_atomic

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"]
OPTS_FILE = "buckeye_prepare.json"
DEV_SPEAKERS = ("s36", "s37")
TEST_SPEAKERS = ("s38", "s39", "s40")
SPEAKER_ZIP = re.compile(r"s\d\d\.zip")
TRACK = re.compile(r"(s\d\d)\d\d[a-z]")
DOWNLOAD_HINT = (
    "Download the Buckeye corpus from https://buckeyecorpus.osu.edu/ (free "
    "registration): its 40 speaker archives s01.zip ... s40.zip, all in one "
    "folder, which is the data_folder (--data_folder=/path/to/buckeye)."
)


def prepare_buckeye(
    data_folder,
    save_folder,
    extract_folder=None,
    dev_speakers=DEV_SPEAKERS,
    test_speakers=TEST_SPEAKERS,
    min_duration=2.0,
    min_words=3,
    skip_prep=False,
    num_workers=16,
    check_audio=False,
    skip_bad_audio=False,
):
    """Writes ``<save_folder>/{train,dev,test}.csv`` (see the module docstring).

    Done once: CSVs made before from the same data folder with the same
    options (recorded in ``<save_folder>/buckeye_prepare.json``) are kept.

    Arguments
    ---------
    data_folder : str
        The folder of the speaker zips ``s01.zip`` ... ``s40.zip``, or of
        the extracted tracks (``<track>.wav`` + ``<track>.words``, at any
        depth).
    save_folder : str
        Where the CSVs go.
    extract_folder : str, optional
        Where the zips are extracted (default: ``data_folder``).
    dev_speakers, test_speakers : sequence of str
        The validation and test speakers (MP3S: s36-s37 and s38-s40); every
        other speaker found is a training speaker.
    min_duration : float
        An utterance is kept when the time from its start to the end of the
        break that closes it is more than this (seconds).
    min_words : int
        ... and when it has at least this many words.
    skip_prep : bool
        Do nothing.
    num_workers : int
        Threads reading the WAV headers (or decoding the tracks).
    check_audio : bool
        Decode every track fully to find truncated or corrupt ones now rather
        than during training.
    skip_bad_audio : bool
        Leave unreadable/truncated tracks out (counted in the log, listed in
        ``<save_folder>/bad_audio_buckeye.txt``) instead of stopping.

    Raises
    ------
    FileNotFoundError
        No data folder, no tracks in it, a ``.words`` file without its
        ``.wav``, or a validation/test speaker missing.
    ValueError
        A ``.words`` file or zip that cannot be read (the message names it).
    lobes.dataio.audio.BadAudioError
        Unreadable (corrupt, truncated) tracks, all named, unless
        ``skip_bad_audio``.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> data = make_demo_corpus("demo_data", ["buckeye"])["buckeye"]
    >>> out = tempfile.mkdtemp()
    >>> prepare_buckeye(data, out, extract_folder=out + "/tracks")
    >>> open(os.path.join(out, "dev.csv")).readline().strip()
    'ID,duration,wav,start,stop,spk_id,wrd'
    """
    if skip_prep:
        logger.info("skip_prep: Buckeye preparation skipped.")
        return
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"Buckeye data folder {data_folder} does not exist. {DOWNLOAD_HINT}")
    extract_folder = Path(extract_folder) if extract_folder else data_folder
    save_folder = Path(save_folder)
    opts = {
        "data_folder": str(data_folder.resolve()),
        "dev_speakers": sorted(dev_speakers),
        "test_speakers": sorted(test_speakers),
        "min_duration": min_duration,
        "min_words": min_words,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    csvs = {split: save_folder / f"{split}.csv" for split in ("train", "dev", "test")}
    if all(p.exists() for p in csvs.values()) and _load_opts(save_folder) == opts:
        logger.info(f"Buckeye CSVs already in {save_folder}: skipping preparation.")
        return

    extract_tracks(data_folder, extract_folder)
    tracks = find_tracks([data_folder, extract_folder])
    if not tracks:
        raise FileNotFoundError(
            f"No Buckeye speaker archive (s01.zip ...) and no extracted track "
            f"(<track>.words next to <track>.wav) under {data_folder}. {DOWNLOAD_HINT}"
        )
    speakers = sorted({TRACK.fullmatch(t).group(1) for t in tracks})
    for name, wanted in (("validation", dev_speakers), ("test", test_speakers)):
        missing = sorted(set(wanted) - set(speakers))
        if missing:
            raise FileNotFoundError(
                f"The {name} speakers {', '.join(missing)} are not in {data_folder} "
                f"(found: {', '.join(speakers)}). MP3S validates on s36-s37 and "
                f"tests on s38-s40: {DOWNLOAD_HINT}"
            )
    split_of = {spk: "dev" for spk in dev_speakers}
    split_of.update({spk: "test" for spk in test_speakers})
    infos = scan_audio(
        [wav_file.resolve() for _, wav_file in tracks.values()], check_audio,
        skip_bad_audio, num_workers, save_folder / "bad_audio_buckeye.txt",
        what=f"Buckeye tracks in {data_folder}",
    )
    rows = {split: [] for split in csvs}
    for track, (words_file, wav_file) in sorted(tracks.items()):
        info = infos.get(str(wav_file.resolve()))
        if info is None:  # skip_bad_audio
            continue
        spk = TRACK.fullmatch(track).group(1)
        rows[split_of.get(spk, "train")] += _track_rows(
            track, words_file, wav_file, info, min_duration, min_words
        )
    if not rows["train"]:
        raise FileNotFoundError(
            f"No training speaker in {data_folder} (only {', '.join(speakers)}). {DOWNLOAD_HINT}"
        )
    save_folder.mkdir(parents=True, exist_ok=True)
    for split, path in csvs.items():
        _write_csv(path, rows[split])
        hours = sum(r[1] for r in rows[split]) / 3600
        logger.info(f"{path}: {len(rows[split])} utterances, {hours:.2f} h")
    write_text_atomic(save_folder / OPTS_FILE, json.dumps(opts, indent=1))


def extract_tracks(data_folder, extract_folder):
    """Extracts ``<track>.wav`` and ``<track>.words`` of every track of the
    speaker zips ``s??.zip`` in ``data_folder`` (and of loose track zips
    ``s????[ab].zip`` under it) into ``extract_folder``, unless both files
    are already there. Returns the number of tracks extracted."""
    data_folder, extract_folder = Path(data_folder), Path(extract_folder)
    done = 0
    zips = [p for p in sorted(data_folder.rglob("*.zip"))
            if SPEAKER_ZIP.fullmatch(p.name) or TRACK.fullmatch(p.stem)]
    for path in progress(zips, desc="Buckeye: extracting the speaker zips", unit="zip"):
        done += _extract_zip(path, extract_folder, str(path))
    if done:
        logger.info(f"Extracted {done} Buckeye tracks into {extract_folder}")
    return done


def _extract_zip(source, extract_folder, name):
    """Extracts the tracks of one speaker or track zip (a path, or the bytes
    of a zip inside another; ``name`` says which, for errors)."""
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"Cannot read the Buckeye archive {name} ({err}): download it again.") from err
    done = 0
    with archive:
        members = [m for m in archive.namelist() if "__MACOSX" not in m and not m.endswith("/")]
        for member in members:
            stem, ext = os.path.splitext(os.path.basename(member))
            if ext == ".zip" and TRACK.fullmatch(stem):  # a track inside a speaker zip
                if not _extracted(extract_folder, stem):
                    done += _extract_zip(archive.read(member), extract_folder, f"{name}:{member}")
            elif ext in (".wav", ".words") and TRACK.fullmatch(stem):
                target = extract_folder / f"{stem}{ext}"
                if not target.exists():
                    _write_atomic(target, archive.read(member))
                    done += ext == ".words"
    return done


def _write_atomic(target, data):
    tmp = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # nothing half-written stays
        if is_write_failure(err):
            raise disk_full_error(
                target.parent, f"the Buckeye track {target.name}", err,
                kept="The tracks extracted before are complete and kept.",
            ) from None
        raise OSError(
            f"Cannot extract the Buckeye track {target.name} into {target.parent} ({err}): "
            "give a writable folder as extract_folder (--extract_folder=...)."
        ) from err
    os.replace(tmp, target)


def _extracted(folder, track):
    return all((folder / f"{track}{ext}").exists() for ext in (".wav", ".words"))


def find_tracks(folders):
    """``{track: (words_file, wav_file)}`` of every ``<track>.words`` under
    ``folders`` (the first one found of a track); the ``.wav`` must be next
    to it."""
    tracks = {}
    for folder in folders:
        for words_file in sorted(Path(folder).rglob("*.words")):
            track = words_file.stem
            if not TRACK.fullmatch(track) or track in tracks:
                continue
            wav_file = words_file.with_suffix(".wav")
            if not wav_file.exists():
                raise FileNotFoundError(
                    f"{words_file} has no audio: {wav_file} does not exist. Extract "
                    f"the track again from its speaker archive {track[:3]}.zip."
                )
            tracks[track] = (words_file, wav_file)
    return tracks


def read_words(text, where="a .words file"):
    """The entries of a Buckeye ``.words`` file: ``[(end_s, word), ...]``
    (the first field of each entry: ``okay``, ``<SIL>``, ``{B_TRANS}``).

    Example
    -------
    >>> read_words("signal s0101a\\n#\\n  0.07 122 {B_TRANS}\\n  1.5 122 okay; ow k ey; ow k ey; null\\n")
    [(0.07, '{B_TRANS}'), (1.5, 'okay')]
    """
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "#") + 1
    except StopIteration:
        raise ValueError(f"{where}: no header line '#': not a Buckeye .words file.") from None
    entries = []
    for number, line in enumerate(lines[start:], start + 1):
        fields = line.split(None, 2)
        if len(fields) < 3:
            continue  # blank lines; entries without a word
        try:
            end = float(fields[0])
        except ValueError:
            raise ValueError(f"{where}, line {number}: {line.strip()!r} has no time.") from None
        word = fields[2].split(";")[0].strip()
        if word:
            entries.append((end, word))
    return entries


def segment_words(entries, min_duration=2.0, min_words=3):
    """MP3S's utterances of one track (see the module docstring).

    Arguments
    ---------
    entries : list of (float, str)
        ``read_words``'s output: the end time and word of each entry.
    min_duration : float
        Seconds from an utterance's start to the end of its closing break.
    min_words : int
        Fewest words of a kept utterance.

    Returns
    -------
    list of (float, float, str)
        Start, end (seconds) and upper-case transcript of each utterance.

    Example
    -------
    >>> entries = [(0.1, "{B_TRANS}"), (0.5, "<SIL>"), (1.0, "so"), (1.4, "i"),
    ...            (2.2, "went"), (2.3, "home"), (2.6, "<SIL>"), (3.0, "yeah"),
    ...            (3.5, "uh"), (9.0, "<IVER>")]
    >>> segment_words(entries)
    [(0.5, 2.3, 'SO I WENT HOME')]
    """
    segments, words, start = [], [], None
    previous_end = entries[0][0] if entries else 0.0
    for end, word in entries[1:]:  # MP3S skips the first entry
        if word.startswith("{"):  # {B_TRANS}, {E_TRANS}: not words, no utterance
            words = []
        elif "<" in word or word == "uh":  # a break closes the utterance
            if len(words) >= min_words and end - start > min_duration:
                segments.append((start, previous_end, " ".join(words).upper()))
            words = []
        else:
            if not words:
                start = previous_end
            words.append(word)
        previous_end = end
    return segments


def _track_rows(track, words_file, wav_file, info, min_duration, min_words):
    """CSV rows ``[ID, duration, wav, start, stop, spk_id, wrd]`` of one track
    whose WAV file ``info`` (``lobes.dataio.audio.AudioInfo``) describes."""
    try:
        text = Path(words_file).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ValueError(f"Cannot read Buckeye track {track} ({err}).") from err
    rate, frames = info.sample_rate, info.frames
    rows = []
    for start_s, end_s, wrd in segment_words(read_words(text, words_file), min_duration, min_words):
        start = max(0, round(start_s * rate))
        stop = min(frames, round(end_s * rate))
        if stop <= start:
            continue  # alignments past the end of the audio
        rows.append([f"{track}_{len(rows)}", (stop - start) / rate,
                     str(Path(wav_file).resolve()), start, stop, track[:3], wrd])
    return rows


def _load_opts(save_folder):
    try:
        return json.loads((Path(save_folder) / OPTS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_csv(path, rows):
    # whole or not at all (a full disk stops with one message)
    write_csv(path, HEADER, ([row[0], f"{row[1]:.3f}", *row[2:]] for row in rows))
