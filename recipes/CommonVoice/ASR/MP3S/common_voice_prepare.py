"""Data preparation for Mozilla Common Voice (https://commonvoice.mozilla.org/datasets)
as the MP3S benchmark uses it: Common Voice 11.0, Welsh (``cy``) and
Basque (``eu``), the release's own ``train``/``dev``/``test`` splits.

The expected layout is one language folder of an extracted release::

    cv-corpus-11.0-2022-09-21/<language>/clips/common_voice_<language>_<n>.mp3
    cv-corpus-11.0-2022-09-21/<language>/{train,dev,test}.tsv
    (validated.tsv, invalidated.tsv, other.tsv, reported.tsv: not used)

``data_folder`` is that language folder, or the release folder above it
(the ``language`` sub-folder is then used). Each TSV has a header line
(``client_id path sentence up_votes down_votes age gender accents locale
segment``) and one clip per line; columns are found by name.

Text normalisation, as MP3S's ``common_voice_prepare.py``
(speechbrain/benchmarks ``benchmarks/MP3S/CommonVoice``, with
``accented_letters: True``): MP3S has no language-specific rule for Welsh or
Basque, so the sentence is kept as written -- case, accents (``ŵ``, ``ŷ``,
``ñ``) and punctuation included -- with runs of spaces collapsed and the
ends stripped; clips whose normalised sentence has fewer than three words
are left out. ``accented_letters=False`` reduces the text to ASCII as
MP3S does then: accents stripped, other non-ASCII characters (``’``
included) dropped, and apostrophes replaced by spaces.

Writes ``<save_folder>/{train,dev,test}.csv`` with the columns
``ID, duration, wav, spk_id, wrd``: ``ID`` is the clip's file stem,
``duration`` in seconds (from the MP3 header), ``wav`` the absolute path of
the MP3, ``spk_id`` the TSV's ``client_id``, ``wrd`` the normalised sentence.

The clips are MP3 (48 kHz in Common Voice 11.0): they are read with
soundfile, whose wheels (soundfile >= 0.12) bundle libsndfile >= 1.1, which
decodes MP3; the recipe resamples them to 16 kHz when it reads them.

The headers are read by ``lobes.dataio.audio.scan_audio``. A corrupt clip stops
the preparation with a message naming it. With ``check_audio`` every clip is
decoded once, in parallel, so that a truncated one is found now rather than
during training; with ``skip_bad_audio`` such clips are left out and counted
instead (list in ``<save_folder>/bad_audio_<split>.txt``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
import os  # noqa: F401 (the examples use it)
import re
import unicodedata
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.dataio.manifest import write_csv
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]
SPLITS = ("train", "dev", "test")
MP3S_LANGUAGES = ("cy", "eu")
OPTS_FILE = "common_voice_prepare.json"
DOWNLOAD_HINT = (
    "Download Common Voice Corpus 11.0 for the language from "
    "https://commonvoice.mozilla.org/datasets (cv-corpus-11.0-2022-09-21-<language>.tar.gz), "
    "extract it and pass cv-corpus-11.0-2022-09-21/<language> as data_folder."
)


def prepare_common_voice(
    data_folder,
    save_folder,
    language="cy",
    splits=SPLITS,
    accented_letters=True,
    skip_prep=False,
    num_workers=16,
    check_audio=False,
    skip_bad_audio=False,
):
    """Writes ``<save_folder>/<split>.csv`` for each split (see the module
    docstring).

    Done once: CSVs made before from the same folder with the same options
    (recorded in ``<save_folder>/common_voice_prepare.json``) are kept.

    Arguments
    ---------
    data_folder : str
        The language folder (holding ``clips/`` and the TSVs), or the
        release folder holding ``<language>/``.
    save_folder : str
        Where the CSVs go.
    language : str
        The Common Voice language code: ``cy`` or ``eu`` in MP3S.
    splits : sequence of str
        Among ``train``, ``dev``, ``test`` (the TSVs of those names).
    accented_letters : bool
        Keep accented letters and apostrophes (MP3S: True).
    skip_prep : bool
        Do nothing.
    num_workers : int
        Threads reading the MP3 headers (or decoding the clips).
    check_audio : bool
        Decode every clip fully to find truncated or corrupt ones now rather
        than during training.
    skip_bad_audio : bool
        Leave unreadable/truncated clips out (counted in the log, listed in
        ``<save_folder>/bad_audio_<split>.txt``) instead of stopping.

    Raises
    ------
    FileNotFoundError
        No data folder, ``clips/`` or TSV, or clips listed in a TSV missing
        (the message names the first ones).
    ValueError
        A TSV without the ``path``/``sentence``/``client_id`` columns or
        with a short line, a data folder of another language, or a
        soundfile that cannot read MP3.
    lobes.dataio.audio.BadAudioError
        Unreadable (corrupt, truncated) clips, all named, unless
        ``skip_bad_audio`` (a ``ValueError`` too).

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_corpus import make_demo_corpus
    >>> data = make_demo_corpus("demo_data", ["commonvoice"])["commonvoice"]
    >>> out = tempfile.mkdtemp()
    >>> prepare_common_voice(data / "cv-corpus-11.0-2022-09-21", out, language="eu")
    >>> open(os.path.join(out, "test.csv"), encoding="utf-8").readline().strip()
    'ID,duration,wav,spk_id,wrd'
    """
    if skip_prep:
        logger.info("skip_prep: Common Voice preparation skipped.")
        return
    if language not in MP3S_LANGUAGES:
        logger.warning(
            f"language: {language}. MP3S defines Welsh (cy) and Basque (eu); other "
            "languages get the same normalisation (no language-specific rule)."
        )
    data_folder = find_language_folder(data_folder, language)
    save_folder = Path(save_folder)
    opts = {
        "data_folder": str(data_folder.resolve()),
        "language": language,
        "accented_letters": accented_letters,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    csvs = {split: save_folder / f"{split}.csv" for split in splits}
    done = _load_opts(save_folder)
    todo = [s for s in splits if not (csvs[s].exists() and done.get(csvs[s].name) == opts)]
    if not todo:
        logger.info(f"Common Voice CSVs for {list(splits)} already in {save_folder}: skipping preparation.")
        return
    _check_mp3_support()
    save_folder.mkdir(parents=True, exist_ok=True)
    for split in todo:
        rows = _split_rows(
            data_folder, split, accented_letters, num_workers, check_audio,
            skip_bad_audio, report_file=save_folder / f"bad_audio_{split}.txt",
        )
        _write_csv(csvs[split], rows)
        done[csvs[split].name] = opts
        write_text_atomic(save_folder / OPTS_FILE, json.dumps(done, indent=1))
        hours = sum(r[1] for r in rows) / 3600
        logger.info(f"{csvs[split]}: {len(rows)} clips, {hours:.2f} h")


def normalize_sentence(sentence, accented_letters=True):
    """MP3S's normalisation of a Welsh or Basque sentence; returns the
    text, or None for sentences of fewer than three words (left out).

    Example
    -------
    >>> normalize_sentence("  Mae'r  gath yn cysgu ar y gadair. ")
    "Mae'r gath yn cysgu ar y gadair."
    >>> normalize_sentence("Mae'r tŷ yn fawr, on’d yw e?", accented_letters=False)
    'Mae r ty yn fawr, ond yw e?'
    >>> normalize_sentence("Eskerrik asko!") is None
    True
    """
    words = sentence
    if not accented_letters:
        words = unicodedata.normalize("NFD", words).encode("ascii", "ignore").decode("utf-8")
        words = words.replace("'", " ").replace("’", " ")
    words = re.sub(" +", " ", words).strip()
    if len(words.split(" ")) < 3:
        return None
    return words


def find_language_folder(data_folder, language):
    """The folder holding ``clips/`` for ``language``: ``data_folder`` or
    ``data_folder/<language>``; a release's folder of another language is
    refused."""
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"Common Voice data folder {data_folder} does not exist. {DOWNLOAD_HINT}")
    if (data_folder / language / "clips").is_dir():
        return data_folder / language
    if not (data_folder / "clips").is_dir():
        found = sorted(p.name for p in data_folder.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"No clips/ folder in {data_folder} nor in {data_folder / language} (found: "
            f"{', '.join(found) or 'nothing'}). {DOWNLOAD_HINT}"
        )
    if data_folder.name != language and data_folder.parent.name.startswith("cv-corpus"):
        raise ValueError(
            f"{data_folder} is the {data_folder.name!r} folder of a Common Voice release, "
            f"but language is {language!r}: pass --language={data_folder.name} or the "
            f"{language!r} folder as data_folder."
        )
    return data_folder


def _check_mp3_support():
    if "MP3" not in sf.available_formats():
        raise ValueError(
            f"This soundfile (libsndfile {sf.__libsndfile_version__}) cannot read MP3, "
            "the format of Common Voice clips: `pip install -U soundfile` (>= 0.12, whose "
            "wheels bundle libsndfile >= 1.1 with MP3), or a system libsndfile >= 1.1."
        )


def _read_tsv(tsv):
    """The clips of a Common Voice TSV: ``[(line number, {column: value})]``."""
    if not tsv.is_file():
        raise FileNotFoundError(
            f"{tsv} does not exist: is the Common Voice release fully extracted? {DOWNLOAD_HINT}"
        )
    with open(tsv, encoding="utf-8") as fin:
        lines = fin.read().splitlines()
    header = lines[0].split("\t") if lines else []
    missing = [c for c in ("client_id", "path", "sentence") if c not in header]
    if missing:
        raise ValueError(
            f"{tsv} has no column {', '.join(missing)} in its header line ({header}): "
            "not a Common Voice TSV."
        )
    rows = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) < len(header):
            raise ValueError(
                f"{tsv}, line {number}: {len(values)} tab-separated fields, "
                f"{len(header)} expected ({', '.join(header)})."
            )
        rows.append((number, dict(zip(header, values))))
    return rows


def _split_rows(data_folder, split, accented_letters, num_workers, check_audio=False,
                skip_bad_audio=False, report_file=None):
    """CSV rows ``[ID, duration, wav, spk_id, wrd]`` of one split, TSV order
    (unusable clips left out with ``skip_bad_audio``; see
    ``lobes.dataio.audio.scan_audio``)."""
    tsv = data_folder / f"{split}.tsv"
    entries = _read_tsv(tsv)
    clips = []
    for _, row in entries:
        words = normalize_sentence(row["sentence"], accented_letters)
        if words is not None:
            clips.append((data_folder / "clips" / row["path"], row["client_id"], words))
    missing = [str(c[0]) for c in clips if not c[0].is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} clips listed in {tsv} are not in {data_folder / 'clips'} "
            f"(e.g. {', '.join(missing[:3])}): extract the release again. {DOWNLOAD_HINT}"
        )

    infos = scan_audio(
        [path.resolve() for path, _, _ in clips], check_audio, skip_bad_audio,
        num_workers, report_file, what=f"Common Voice clips of {tsv}",
    )
    left_out = len(entries) - len(clips)
    if left_out:
        logger.info(f"{split}: {left_out} clips of fewer than 3 words left out (MP3S).")
    rows = []
    for path, spk, words in clips:
        info = infos.get(str(path.resolve()))
        if info is not None:
            rows.append([path.stem, info.duration, str(path.resolve()), spk, words])
    return rows


def _load_opts(save_folder):
    try:
        return json.loads((Path(save_folder) / OPTS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_csv(path, rows):
    # whole or not at all (a full disk stops with one message)
    write_csv(path, HEADER, ([row[0], f"{row[1]:.3f}", *row[2:]] for row in rows))
