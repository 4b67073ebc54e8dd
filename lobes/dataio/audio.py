"""Audio shared by every recipe: reading, checking and filtering.

torchaudio 2.9 removed ``torchaudio.info`` and moved ``torchaudio.load`` to
TorchCodec, so audio is read with soundfile. Unlike a bare read, this fails
with a message naming the file for unreadable or empty audio, and converts a
wrong sample rate to the model's rate (with one warning per rate), instead of
silently feeding audio at the wrong speed to the model.

* ``load_audio``: a file or a segment (in the file's own samples), mono, at
  the model's rate;
* ``load_audio_crop``: a crop of a given length in *seconds*, positioned with
  the file's real sample rate and length (a training crop);
* ``scan_audio``: the data preparation's pass over all files of a corpus:
  headers (durations, rates) and, with ``check_audio``, a full decode in
  parallel that finds truncated or corrupt files before training; bad files
  stop the preparation or, with ``skip_bad_audio``, are left out and counted
  (the list goes to the log and to a file);
* ``filter_by_duration``: ``avoid_if_shorter_than``/``avoid_if_longer_than``
  filtering that logs how many utterances each bound left out.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio
from speechbrain.utils.logger import get_logger

from lobes.utils.progress import progress

logger = get_logger(__name__)
_warned_rates = set()


class AudioReadError(RuntimeError):
    """An audio file could not be used; the message names the file."""


def load_audio(wav, sample_rate=16000):
    """Reads a mono waveform at ``sample_rate``.

    Arguments
    ---------
    wav : str or dict
        A path, or a SpeechBrain segment dict ``{"file": path, "start": s,
        "stop": e}`` in samples (as written by ``librilight_prepare``).
    sample_rate : int
        Rate the model expects. Audio at another rate is resampled.

    Returns
    -------
    torch.Tensor
        (samples,) float32.

    Raises
    ------
    AudioReadError
        Missing, unreadable (corrupt), empty or non-finite audio, naming
        the file.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, np.zeros(8000, dtype="float32"), 8000)
    >>> load_audio(path, 16000).shape
    torch.Size([16000])
    >>> open(path, "wb").close()
    >>> load_audio(path)
    Traceback (most recent call last):
    ...
    lobes.dataio.audio.AudioReadError: Cannot read audio file ...
    """
    if isinstance(wav, dict):
        path = wav["file"]
        start, stop = int(wav.get("start", 0)), wav.get("stop")
        stop = None if stop is None else int(stop)
    else:
        path, start, stop = wav, 0, None
    if not os.path.isfile(path):
        raise AudioReadError(
            f"Audio file {path} does not exist. Check `data_folder` or "
            "re-run the data preparation (delete its CSV files first)."
        )
    try:
        sig, sr = sf.read(
            path, start=start, stop=stop, dtype="float32", always_2d=True
        )
    except Exception as err:  # soundfile raises several error types
        raise AudioReadError(
            f"Cannot read audio file {path} ({err}). The file is corrupt or "
            "not audio: re-download it or remove it from the CSV manifest."
        ) from err
    if sig.shape[0] == 0:
        raise AudioReadError(
            f"Audio file {path} is empty (0 samples in the requested "
            "segment). Remove it from the CSV manifest."
        )
    sig = torch.from_numpy(sig).mean(dim=1)
    if not torch.isfinite(sig).all():
        raise AudioReadError(
            f"Audio file {path} contains NaN or infinite samples. Remove it "
            "from the CSV manifest."
        )
    if sr != sample_rate:
        if sr not in _warned_rates:
            _warned_rates.add(sr)
            logger.warning(
                f"{path} is sampled at {sr} Hz; resampling to {sample_rate} "
                "Hz (further files at this rate are resampled silently)."
            )
        sig = torchaudio.functional.resample(sig, sr, sample_rate)
    return sig


def load_audio_crop(path, seconds, sample_rate=16000, position="random"):
    """Reads a crop of ``seconds`` of ``path``, mono, at ``sample_rate``.

    The crop is placed in the file's own samples, with its real sample rate
    and length read from its header, then resampled: a 3-s crop of an 8 kHz
    file is 3 s, not 6 s, and never starts beyond the end of the file. A file
    shorter than the crop is read whole.

    Arguments
    ---------
    path : str
        Audio file.
    seconds : float
        Length of the crop.
    sample_rate : int
        Rate the model expects.
    position : str
        ``random`` (uniform start, Python's ``random``: seeded by the
        recipe) or ``centre``.

    Returns
    -------
    torch.Tensor
        (samples,) float32, ``round(seconds * sample_rate)`` samples (fewer
        for a shorter file).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, np.random.rand(12 * 8000).astype("float32"), 8000)
    >>> load_audio_crop(path, 3.0, 16000).shape
    torch.Size([48000])
    >>> load_audio_crop(path, 20.0, 16000, "centre").shape
    torch.Size([192000])
    """
    if position not in ("random", "centre"):
        raise ValueError(f"position {position!r}: use 'random' or 'centre'.")
    try:
        info = sf.info(str(path))
    except Exception as err:
        raise AudioReadError(
            f"Cannot read audio file {path} ({err}). The file is corrupt or "
            "not audio: re-download it or remove it from the CSV manifest."
        ) from err
    frames, rate = info.frames, info.samplerate
    crop = max(1, int(round(seconds * rate)))
    if frames <= crop:
        start = 0
    elif position == "random":
        start = random.randint(0, frames - crop)
    else:
        start = (frames - crop) // 2
    sig = load_audio({"file": str(path), "start": start, "stop": start + crop}, sample_rate)
    return sig[: int(round(seconds * sample_rate))]


class AudioInfo(NamedTuple):
    """What the data preparation needs of an audio file (from its header,
    and the number of samples actually decoded when checked)."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self):
        """Seconds."""
        return self.frames / self.sample_rate


class BadAudioError(ValueError):
    """Audio files a preparation cannot use; ``bad`` lists ``(path,
    reason)`` pairs, the message names them and says what to do."""

    def __init__(self, message, bad):
        super().__init__(message)
        self.bad = bad


def audio_info(path, decode=False):
    """Header of ``path`` and, with ``decode``, a check that the whole file
    decodes to finite samples, as many as the header announces.

    Arguments
    ---------
    path : str
        Audio file.
    decode : bool
        Decode every sample (in blocks of 10 s): finds truncated files whose
        header is intact, corrupt frames and NaN/inf samples.

    Returns
    -------
    AudioInfo

    Raises
    ------
    AudioReadError
        With the reason (not the path: ``scan_audio`` names the file).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros((22050, 2), dtype="float32"), 22050)
    >>> audio_info(path, decode=True)
    AudioInfo(frames=22050, sample_rate=22050, channels=2)
    >>> data = open(path, "rb").read()
    >>> _ = open(path, "wb").write(data[: len(data) // 2])
    >>> audio_info(path).frames  # the header is intact
    22050
    >>> audio_info(path, decode=True)
    Traceback (most recent call last):
    ...
    lobes.dataio.audio.AudioReadError: ...
    """
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several error types
        raise AudioReadError(f"unreadable header: {err}") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioReadError("no audio samples")
    result = AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))
    if not decode:
        return result
    decoded = 0
    try:
        with sf.SoundFile(str(path)) as fin:
            block = max(1, 10 * fin.samplerate)
            # read() returns what was really decoded; blocks() yields full
            # blocks up to the header's length even when the decoder stops
            # early (a truncated MP3: the rest of the block is uninitialised)
            while True:
                chunk = fin.read(block, dtype="float32", always_2d=True)
                if not len(chunk):
                    break
                if not np.isfinite(chunk).all():
                    raise AudioReadError(
                        f"NaN or infinite samples after {decoded / info.samplerate:.2f} s"
                    )
                decoded += len(chunk)
    except AudioReadError:
        raise
    except Exception as err:
        raise AudioReadError(
            f"decoding failed after {decoded / info.samplerate:.2f} s of "
            f"{result.duration:.2f} s ({err}): truncated or corrupt"
        ) from err
    if decoded != info.frames:
        raise AudioReadError(
            f"truncated: the header announces {info.frames} samples, "
            f"{decoded} decode"
        )
    if info.format == "WAV":
        missing = _missing_wav_bytes(path)
        if missing:
            raise AudioReadError(
                f"truncated: its data chunk announces {missing} more bytes than "
                f"the file holds (only {result.duration:.2f} s are left)"
            )
    return result


def _missing_wav_bytes(path):
    """How many bytes of a RIFF/WAVE file's ``data`` chunk are missing (0
    when complete, or when the writer left the size open: 0 or 0xFFFFFFFF).

    libsndfile reads a cut WAV file without complaint, as a shorter one:
    only its header tells that the rest of the recording is gone.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fin:
        head = fin.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        offset = 12
        while offset + 8 <= size:
            fin.seek(offset)
            chunk = fin.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                if length in (0, 0xFFFFFFFF):
                    return 0
                return max(0, offset + 8 + length - size)
            offset += 8 + length + (length % 2)
    return 0


def scan_audio(
    paths,
    check_audio=False,
    skip_bad_audio=False,
    num_workers=16,
    report_file=None,
    what="audio files",
):
    """Reads the headers of ``paths`` (and decodes them fully with
    ``check_audio``) in parallel; unusable files stop the preparation or are
    left out and counted.

    This is the one place where every data preparation reads its audio. A
    file that cannot be read (corrupt header, empty, truncated with an
    intact header, NaN samples...) raises ``BadAudioError`` naming every such
    file, or, with ``skip_bad_audio``, is left out of the result with a
    warning that counts them. The list (``path<TAB>reason``) is also written
    to ``report_file``.

    Arguments
    ---------
    paths : list of str
        Audio files.
    check_audio : bool
        Decode every file fully (``audio_info(decode=True)``): slower (the
        whole corpus is read once) but finds truncated files that would
        otherwise crash the training when it reaches them.
    skip_bad_audio : bool
        Leave unusable files out (counted in the log) instead of stopping.
    num_workers : int
        Threads (soundfile decodes without holding the GIL).
    report_file : str or Path, optional
        Where the list of unusable files goes (removed when there is none).
    what : str
        Name of the file set in the messages (e.g. ``LibriSpeech dev-clean``).

    Returns
    -------
    dict
        ``{path: AudioInfo}`` of the usable files, in the order of ``paths``.

    Raises
    ------
    BadAudioError
        Unusable files and not ``skip_bad_audio``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> good, bad = os.path.join(folder, "good.wav"), os.path.join(folder, "bad.wav")
    >>> sf.write(good, np.zeros(8000, dtype="float32"), 8000)
    >>> _ = open(bad, "wb").write(b"not audio")
    >>> scan_audio([good, bad], what="demo")
    Traceback (most recent call last):
    ...
    lobes.dataio.audio.BadAudioError: demo: 1 of 2 audio files cannot be used...
    >>> infos = scan_audio([good, bad], skip_bad_audio=True,
    ...                    report_file=os.path.join(folder, "bad_audio.txt"))
    >>> list(infos) == [good], infos[good].duration
    (True, 1.0)
    >>> open(os.path.join(folder, "bad_audio.txt")).read().startswith(bad)
    True
    """
    paths = [str(p) for p in paths]

    def check(path):
        try:
            return audio_info(path, decode=check_audio), None
        except AudioReadError as err:
            return None, str(err)

    start = time.time()
    if check_audio:
        logger.info(f"{what}: decoding {len(paths)} audio files to check them ...")
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(progress(
            pool.map(check, paths), total=len(paths), unit="file",
            desc=f"{what}: {'decoding' if check_audio else 'reading headers of'} audio files",
        ))
    infos = {p: info for p, (info, _) in zip(paths, results) if info is not None}
    bad = [(p, reason) for p, (_, reason) in zip(paths, results) if reason is not None]
    if check_audio:
        logger.info(
            f"{what}: {len(paths)} audio files decoded in {time.time() - start:.0f} s, "
            f"{len(bad)} unusable."
        )
    if report_file is not None:
        report_file = Path(report_file)
        if bad:
            report_file.parent.mkdir(parents=True, exist_ok=True)
            report_file.write_text(
                "".join(f"{p}\t{reason}\n" for p, reason in bad), encoding="utf-8"
            )
        elif report_file.exists():
            report_file.unlink()
    if not bad:
        return infos
    shown = "\n".join(f"  Cannot read audio file {p} ({reason})" for p, reason in bad[:10])
    more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
    listed = f" (all listed in {report_file})" if report_file is not None else ""
    if not skip_bad_audio:
        raise BadAudioError(
            f"{what}: {len(bad)} of {len(paths)} audio files cannot be used"
            f"{listed}:\n{shown}{more}\nRe-download or re-extract them, delete "
            "them, or set skip_bad_audio: True (--skip_bad_audio=True) to leave "
            "them out (they are counted in the log).",
            bad,
        )
    logger.warning(
        f"{what}: skipped {len(bad)} of {len(paths)} audio files that cannot be "
        f"used{listed}:\n{shown}{more}"
    )
    return infos


def filter_by_duration(
    dataset, split, min_duration=None, max_duration=None, key="duration", **sort_kwargs
):
    """``dataset.filtered_sorted`` by duration, logging what was left out.

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        Items with a ``key`` field in seconds.
    split : str
        Name of the split in the log (``train``, ``dev-clean``...).
    min_duration, max_duration : float, optional
        Keep ``min_duration <= duration <= max_duration`` (the recipes'
        ``avoid_if_shorter_than`` / ``avoid_if_longer_than``).
    key : str
        The duration field.
    **sort_kwargs
        ``sort_key``, ``reverse``... passed to ``filtered_sorted``.

    Returns
    -------
    DynamicItemDataset
        The filtered (and sorted) view.

    Example
    -------
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> data = DynamicItemDataset({f"u{i}": {"duration": d} for i, d in
    ...                            enumerate([0.5, 3.0, 12.0, 70.0])})
    >>> len(filter_by_duration(data, "train", 1.0, 60.0))
    2
    """
    durations = [float(dataset.data[i][key]) for i in dataset.data_ids]
    limits = {}
    short = long = 0
    if min_duration is not None:
        limits["key_min_value"] = {key: min_duration}
        short = sum(d < min_duration for d in durations)
    if max_duration is not None:
        limits["key_max_value"] = {key: max_duration}
        long = sum(d > max_duration for d in durations)
    filtered = dataset.filtered_sorted(**limits, **sort_kwargs)
    parts = []
    if min_duration is not None:
        parts.append(f"{short} shorter than {min_duration} s (avoid_if_shorter_than)")
    if max_duration is not None:
        parts.append(f"{long} longer than {max_duration} s (avoid_if_longer_than)")
    if parts:
        message = (
            f"{split}: {len(filtered)} of {len(durations)} utterances kept; "
            + " and ".join(parts) + " left out."
        )
        (logger.warning if short + long else logger.info)(message)
    return filtered
