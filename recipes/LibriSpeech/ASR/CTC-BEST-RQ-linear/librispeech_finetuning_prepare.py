"""Data preparation for Libri-light's limited-resource fine-tuning sets.

Libri-light (Kahn et al., 2020; https://github.com/facebookresearch/libri-light)
defines three labelled training sets drawn from LibriSpeech's training
splits, for fine-tuning self-supervised models: 10 hours, 1 hour and 10
minutes, each half "clean", half "other". They come as one archive,
``librispeech_finetuning.tgz``
(https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz),
which extracts to::

    librispeech_finetuning/
        1h/0/clean/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
        1h/0/clean/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
        1h/0/other/...
        1h/1/ ... 1h/5/          six 10-minute folds
        9h/clean/<speaker>/<chapter>/...
        9h/other/...
        phones/                  phone transcriptions (not used here)

in LibriSpeech's own layout below each fold. The sets are

* ``10min``: ``1h/0``;
* ``1h``: ``1h/0`` ... ``1h/5``;
* ``10h``: the six folds of ``1h`` and ``9h``.

Validation and test use LibriSpeech's dev and test splits
(``lobes.dataio.librispeech_prepare``). The CSV has the columns of the LibriSpeech
CSVs (``ID, duration, wav, spk_id, wrd``), read by the same code
(``lobes.dataio.librispeech_prepare``): the same checks of audio and transcripts.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
from collections import Counter
from pathlib import Path

from speechbrain.utils.logger import get_logger

from lobes.dataio.librispeech_prepare import _split_rows, _write_csv
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
FOLDS = [f"1h/{k}" for k in range(6)]
SUBSETS = {"10min": ["1h/0"], "1h": FOLDS, "10h": [*FOLDS, "9h"]}
ARCHIVE = "librispeech_finetuning"
URL = "https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz"
OPTS_FILE = "librispeech_finetuning_prepare.json"


def prepare_librilight_finetuning(
    data_folder, save_folder, subset="10h", csv_name="train.csv", skip_prep=False,
    num_workers=16, check_audio=False, skip_bad_audio=False,
):
    """Writes ``<save_folder>/<csv_name>``: the utterances of one Libri-light
    fine-tuning set, sorted by ID.

    A CSV made before from the same folder and set (recorded in
    ``<save_folder>/librispeech_finetuning_prepare.json``) is kept.

    Arguments
    ---------
    data_folder : str or Path
        The extracted ``librispeech_finetuning`` folder (or the folder that
        holds it).
    save_folder : str or Path
        Where the CSV goes.
    subset : str
        ``10h``, ``1h`` or ``10min``.
    csv_name : str
        The CSV's file name.
    skip_prep : bool
        Do nothing (the CSV is already there).
    num_workers : int
        Threads reading the audio headers.
    check_audio : bool
        Decode every file once (``lobes.dataio.audio.scan_audio``): a truncated or
        corrupt file stops the preparation, named, not the training later.
    skip_bad_audio : bool
        Leave such files out instead (counted in the log, listed in
        ``<save_folder>/bad_audio_<fold>.txt``).

    Raises
    ------
    ValueError
        An unknown ``subset``; a FLAC file without transcript or unreadable.
    FileNotFoundError
        The folder, or a fold of the set, is missing.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> data = make_demo_corpus("demo_data", ["librispeech_finetuning"])
    >>> out = tempfile.mkdtemp()
    >>> prepare_librilight_finetuning(data["librispeech_finetuning"], out, "1h")
    >>> open(f"{out}/train.csv").readline().strip()
    'ID,duration,wav,spk_id,wrd'
    >>> prepare_librilight_finetuning(data["librispeech_finetuning"], out, "5h")
    Traceback (most recent call last):
    ...
    ValueError: Libri-light fine-tuning set '5h': use one of 10min, 1h, 10h.
    """
    if skip_prep:
        logger.info("skip_prep: Libri-light fine-tuning preparation skipped.")
        return
    if subset not in SUBSETS:
        raise ValueError(
            f"Libri-light fine-tuning set {subset!r}: use one of {', '.join(SUBSETS)}."
        )
    root = _find_root(Path(data_folder))
    missing = [fold for fold in SUBSETS[subset] if not (root / fold).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root} lacks the folder(s) {', '.join(missing)} of the {subset} set: "
            f"extract {URL} completely and give its {ARCHIVE}/ folder "
            "(librilight_folder in the YAML)."
        )
    save_folder = Path(save_folder)
    csv_file = save_folder / csv_name
    record = {"data_folder": str(root.resolve()), "subset": subset,
              "check_audio": bool(check_audio), "skip_bad_audio": bool(skip_bad_audio)}
    opts_file = save_folder / OPTS_FILE
    done = json.loads(opts_file.read_text()) if opts_file.is_file() else {}
    if csv_file.is_file() and done.get(csv_name) == record:
        logger.info(f"{csv_file} ({subset}) exists: skipping preparation.")
        return
    save_folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for fold in SUBSETS[subset]:
        try:
            report = save_folder / f"bad_audio_{fold.replace('/', '_')}.txt"
            rows += _split_rows(root, fold, num_workers, check_audio, skip_bad_audio, report)
        except ValueError as err:
            raise ValueError(
                f"{err} (in Libri-light's {ARCHIVE}: extract {URL} again)"
            ) from err
    rows.sort(key=lambda r: r[0])
    twice = sorted(i for i, n in Counter(r[0] for r in rows).items() if n > 1)
    if twice:
        raise ValueError(f"Utterance(s) {twice[:5]} found in two folds of {root}.")
    _write_csv(csv_file, rows)
    done[csv_name] = record
    write_text_atomic(opts_file, json.dumps(done, indent=1))
    logger.info(
        f"{csv_file}: Libri-light {subset}, {len(rows)} utterances, "
        f"{sum(r[1] for r in rows) / 3600:.2f} h"
    )


def _find_root(data_folder):
    """The ``librispeech_finetuning`` folder: ``data_folder`` or its child."""
    if (data_folder / ARCHIVE).is_dir() and not (data_folder / "1h").is_dir():
        return data_folder / ARCHIVE
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"Libri-light fine-tuning folder {data_folder} does not exist: download "
            f"{URL}, extract it and give its {ARCHIVE}/ folder (librilight_folder "
            "in the YAML)."
        )
    return data_folder
