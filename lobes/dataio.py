"""Audio loading shared by every recipe: soundfile, checked, resampled.

torchaudio 2.9 removed ``torchaudio.info`` and moved ``torchaudio.load`` to
TorchCodec, so audio is read with soundfile. Unlike a bare read, this fails
with a message naming the file for unreadable or empty audio, and converts a
wrong sample rate to the model's rate (with one warning per rate), instead of
silently feeding audio at the wrong speed to the model.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os

import soundfile as sf
import torch
import torchaudio
from speechbrain.utils.logger import get_logger

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
    lobes.dataio.AudioReadError: Cannot read audio file ...
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
