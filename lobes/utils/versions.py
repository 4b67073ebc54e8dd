"""The SpeechBrain versions this package runs with, checked at import.

``SUPPORTED`` is the range of ``setup.cfg``'s ``install_requires``, and
``import lobes`` checks the SpeechBrain it finds against it, before anything
imports SpeechBrain (whose own import may fail first with an unrelated
message, e.g. SpeechBrain 1.0 with torchaudio 2.9):

* SpeechBrain 1.1.x runs (tested: 1.1.0 and 1.1.2 from PyPI);
* "1.0.4" is SpeechBrain 1.1.0: its git tags ``v1.1.0`` and ``v1.0.4`` are
  one commit whose ``version.txt`` says 1.0.4 (PyPI's 1.1.0 wheel differs
  from that commit in this file only), so a fork cut at the tag reports it;
* older versions are refused, with the reason (``TOO_OLD``): SpeechBrain
  1.0.3 (PyPI's last 1.0 release, and what SpeechBrain's ``develop`` reported
  from April 2025 to March 2026) and 0.5.16 (the BEST-RQ study's fork). The
  decision was made by running the unit tests under SpeechBrain 1.0.3 (with
  torch and torchaudio 2.8: it does not import with torchaudio 2.9): the
  run options, the inference interface and the normaliser's statistics
  files differ, and supporting it would mean a second torch stack;
* newer versions (1.2 and later) are untested: a warning says so.

``BRQ_SKIP_SPEECHBRAIN_CHECK=1`` turns the refusal into a warning, for a
fork whose version string lags behind its code.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import importlib.metadata
import importlib.util
import os
import re
import warnings
from pathlib import Path

SUPPORTED = ">=1.1.0,<1.2"
MINIMUM = (1, 1, 0)
BELOW = (1, 2)
TESTED = ("1.1.0", "1.1.2", "1.0.4 (the v1.1.0 git tag)")
# Version strings that name a supported release under another number.
ALIASES = {"1.0.4": "1.1.0"}
SKIP_ENV = "BRQ_SKIP_SPEECHBRAIN_CHECK"

TOO_OLD = (
    "SpeechBrain 1.0.3 and earlier differ from 1.1 where this package "
    "depends on it (the unit tests, run with SpeechBrain 1.0.3 and torch "
    "2.8, fail there): run options come as a plain dict without the "
    "RunOptions that lobes.recipe reads (torchrun on CPU), the Pretrained "
    "interface has no inference_ctx (lobes.deploy.inference), "
    "InputNormalization saves and computes its global statistics "
    "differently (its files do not load across the two), and 1.0.3 does not "
    "import with torchaudio 2.9 or later; 0.5.x (the BEST-RQ study's fork) "
    "lacks speechbrain.utils.logger too. Its checkpoints convert into this "
    "package's model folders in a supported environment: python -m "
    "lobes.deploy.convert --layout authors"
)


class SpeechBrainVersionError(ImportError):
    """The installed SpeechBrain is outside ``SUPPORTED``."""


def parse_version(text):
    """``(major, minor, patch)`` of a version string; suffixes (``.dev0``,
    ``rc1``, ``+fork``) are ignored. None if it does not start with one.

    Example
    -------
    >>> parse_version("1.1.2"), parse_version("1.0.4+myfork"), parse_version("1.2.0rc1")
    ((1, 1, 2), (1, 0, 4), (1, 2, 0))
    >>> parse_version("develop") is None
    True
    """
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def installed_speechbrain():
    """``(version, location)`` of the SpeechBrain Python would import, read
    without importing it (its ``version.txt``, else the installed metadata);
    ``(None, None)`` when there is none."""
    spec = importlib.util.find_spec("speechbrain")
    if spec is None or not spec.origin:
        return None, None
    folder = Path(spec.origin).parent
    version_file = folder / "version.txt"
    if version_file.is_file():
        return version_file.read_text(encoding="utf-8").strip(), folder
    try:
        return importlib.metadata.version("speechbrain"), folder
    except importlib.metadata.PackageNotFoundError:
        return None, folder


def _what_to_do():
    return (
        f"What to do: install a supported SpeechBrain in this environment "
        f"(pip install 'speechbrain{SUPPORTED}'); in a SpeechBrain fork, "
        "rebase it on SpeechBrain's v1.1.0 tag or later (then install this "
        "package with `pip install --no-deps -e <this repository>`, see its "
        f"README, so that pip never replaces the fork's SpeechBrain). "
        f"{SKIP_ENV}=1 skips this check, at your own risk."
    )


def check_speechbrain(version=None, location=None, environ=None):
    """Refuses a SpeechBrain older than ``SUPPORTED`` (``SpeechBrainVersionError``,
    an ``ImportError`` naming the installed version, the range and what to
    do); warns for a newer one.

    Arguments
    ---------
    version : str, optional
        Default: the installed SpeechBrain's (:func:`installed_speechbrain`).
    location : str or Path, optional
        Where that SpeechBrain is, for the message.
    environ : dict, optional
        Default ``os.environ`` (``BRQ_SKIP_SPEECHBRAIN_CHECK``).

    Returns
    -------
    tuple or None
        The version checked, as ``(major, minor, patch)`` (aliases resolved).

    Example
    -------
    >>> check_speechbrain("1.1.2")
    (1, 1, 2)
    >>> check_speechbrain("1.0.4")  # SpeechBrain's v1.1.0 tag
    (1, 1, 0)
    >>> check_speechbrain("0.5.16", "/fork/speechbrain")
    Traceback (most recent call last):
    ...
    lobes.utils.versions.SpeechBrainVersionError: This package (lobes, brq-linear-mixers) needs SpeechBrain >=1.1.0,<1.2; the SpeechBrain at /fork/speechbrain is 0.5.16. ...
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     check_speechbrain("0.5.16", environ={"BRQ_SKIP_SPEECHBRAIN_CHECK": "1"})
    (0, 5, 16)
    >>> "going on anyway" in str(caught[0].message)
    True
    """
    environ = os.environ if environ is None else environ
    if version is None:
        version, location = installed_speechbrain()
        if version is None and location is None:
            raise SpeechBrainVersionError(
                f"This package (lobes, brq-linear-mixers) needs SpeechBrain "
                f"{SUPPORTED}, and none is installed. {_what_to_do()}"
            )
    where = f" at {location}" if location else ""
    parsed = parse_version(ALIASES.get(str(version).strip(), version))
    if parsed is None:
        warnings.warn(
            f"The SpeechBrain{where} reports the version {version!r}, which "
            f"says nothing of its code: this package is tested with "
            f"SpeechBrain {', '.join(TESTED)} ({SUPPORTED}).",
            stacklevel=2,
        )
        return None
    if parsed >= MINIMUM and parsed[:2] < BELOW:
        return parsed
    if parsed[:2] >= BELOW:
        warnings.warn(
            f"SpeechBrain {version}{where} is newer than the versions this "
            f"package is tested with ({SUPPORTED}: {', '.join(TESTED)}); if "
            "something fails, please report it with this version.",
            stacklevel=2,
        )
        return parsed
    message = (
        f"This package (lobes, brq-linear-mixers) needs SpeechBrain {SUPPORTED}; "
        f"the SpeechBrain{where} is {version}. {TOO_OLD}. {_what_to_do()}"
    )
    if environ.get(SKIP_ENV, "") not in ("", "0"):
        warnings.warn(f"{SKIP_ENV} is set, going on anyway: {message}", stacklevel=2)
        return parsed
    raise SpeechBrainVersionError(message)
