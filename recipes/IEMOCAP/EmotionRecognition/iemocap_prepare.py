"""Data preparation for IEMOCAP 4-class emotion recognition (MP3S protocol).

Reads the IEMOCAP_full_release layout (https://sail.usc.edu/iemocap/)::

    <data_folder>/Session{1..5}/sentences/wav/<dialog>/<turn>.wav
    <data_folder>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt

where each EmoEvaluation file has one line per turn,
``[<start> - <end>]<TAB><turn>       <TAB><label><TAB>[V, A, D]`` (followed by
annotator lines, ignored), and keeps the four MP3S classes: ``neu``, ``hap``
(with ``exc`` merged into it), ``sad`` and ``ang`` (5531 turns in the real
corpus). Every other label (``fru``, ``sur``, ``xxx``...) is dropped.

The 10 speakers are numbered per session as MP3S numbers them: session
``k`` holds speaker ``2k-1`` (female) and ``2k`` (male). The speaker of a
turn is the letter before its 3-digit number (``Ses01F_impro01_M012`` ->
male; ``speaker_assignment="turn_name"``, the default). MP3S's
``load_session`` reads instead the character at a fixed position of the turn
name (18 for a scripted turn of a scripted dialog, else 15), which in the
dialogs whose name ends in a letter (``Ses03M_impro05a``, ``Ses03M_impro05b``,
``Ses03M_impro08b``, ``Ses05M_script01_1b``) is the ``_`` before the
speaker letter: their female turns are filed under the male speaker of the
session, so MP3S's folds 5, 6, 9 and 10 hold other turns than the speakers'
own. ``speaker_assignment="mp3s"`` reproduces that assignment exactly.

Fold ``test_spk_id`` (1-10) is speaker-independent: that speaker is the test
set, the other speaker of the same session the validation set, the 8 others
the training set. ``train.json``, ``valid.json`` and ``test.json`` map each
turn to ``{"wav": absolute path, "length": seconds, "emo": label, "spk_id":
n}``
(``length`` at the file's own sample rate).

With ``check_audio`` every file is decoded once, in parallel, so that a
truncated or corrupt file stops the preparation (naming it) instead of the
training; with ``skip_bad_audio`` such files are left out and counted
instead (``lobes.dataio.audio.scan_audio``; list in
``<save_folder>/bad_audio_iemocap.txt``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import json
import os  # noqa: F401 (the examples use it)
import re
from pathlib import Path

from speechbrain.utils.logger import get_logger

from lobes.dataio.audio import scan_audio
from lobes.utils.safe_io import write_text_atomic

logger = get_logger(__name__)
CLASSES = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang"}
N_UTTERANCES = 5531  # turns of the 4 classes in the real corpus
TURN_LINE = re.compile(
    r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\d\d[FM]_\S+)\s+(\w+)\s+\[", re.MULTILINE
)
SPEAKER = re.compile(r"_([FM])\d{3}$")
SPEAKER_ASSIGNMENTS = ("turn_name", "mp3s")
OPTS_FILE = "iemocap_prepare.json"
HINT = (
    "Request IEMOCAP from https://sail.usc.edu/iemocap/, extract it and pass "
    "the IEMOCAP_full_release folder (holding Session1 ... Session5) as "
    "data_folder."
)


def read_emo_evaluation(path):
    """The (turn, label) pairs of one EmoEvaluation file, all labels.

    Example
    -------
    >>> import tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "Ses01F_impro01.txt")
    >>> _ = open(f, "w").write(
    ...     "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\\n\\n"
    ...     "[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]\\n"
    ...     "C-E2:\\tNeutral;\\t()\\n")
    >>> read_emo_evaluation(f)
    [('Ses01F_impro01_F000', 'neu')]
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return TURN_LINE.findall(text)


def speaker_of(turn, session, assignment="turn_name", emo_file=None):
    """Speaker number (1-10, MP3S's numbering) of ``turn`` in ``session`` (1-5).

    Arguments
    ---------
    turn : str
        Turn name, e.g. ``Ses03M_impro05a_F001``.
    session : int
        Its session (1-5).
    assignment : str
        ``turn_name``: the letter before the turn's number (the speaker);
        ``mp3s``: the character MP3S reads, position 18 of a scripted turn
        in a scripted dialog's file, else 15 (``F`` = female, anything else
        male).
    emo_file : str
        Name of the EmoEvaluation file listing the turn (``mp3s`` only).

    Example
    -------
    >>> speaker_of("Ses03M_script01_1_F012", 3), speaker_of("Ses03M_impro02_M000", 3)
    (5, 6)
    >>> turn = "Ses03M_impro05a_F001"  # a female turn
    >>> speaker_of(turn, 3), speaker_of(turn, 3, "mp3s", "Ses03M_impro05a.txt")
    (5, 6)
    """
    if assignment == "mp3s":
        scripted = emo_file[7] != "i" and turn[7] == "s"
        letter = turn[18] if scripted else turn[15]
        return 2 * session - (1 if letter == "F" else 0)
    found = SPEAKER.search(turn)
    if not found:
        raise ValueError(
            f"Cannot tell the speaker of turn {turn!r}: expected a name ending "
            "in _F<NNN> or _M<NNN> (IEMOCAP turn naming)."
        )
    return 2 * session - (1 if found.group(1) == "F" else 0)


def check_speaker_assignment(assignment):
    """Refuses an unknown ``speaker_assignment``.

    Example
    -------
    >>> check_speaker_assignment("MP3S")
    Traceback (most recent call last):
    ...
    ValueError: speaker_assignment: 'MP3S' in the YAML; use turn_name ...
    """
    if assignment not in SPEAKER_ASSIGNMENTS:
        raise ValueError(
            f"speaker_assignment: {assignment!r} in the YAML; use turn_name "
            "(the speaker letter of each turn) or mp3s (MP3S's fixed "
            "character position, which files some female turns of sessions "
            "3 and 5 under the male speaker)."
        )
    return assignment


def collect_turns(data_folder, speaker_assignment="turn_name"):
    """All turns of the 4 classes: {turn: (wav path, label, speaker 1-10)},
    speakers assigned by ``speaker_assignment`` (see ``speaker_of``)."""
    check_speaker_assignment(speaker_assignment)
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"IEMOCAP data folder {data_folder} does not exist. {HINT}")
    turns = {}
    for session in range(1, 6):
        emo_dir = data_folder / f"Session{session}" / "dialog" / "EmoEvaluation"
        wav_dir = data_folder / f"Session{session}" / "sentences" / "wav"
        if not emo_dir.is_dir() or not wav_dir.is_dir():
            raise FileNotFoundError(
                f"{data_folder} lacks Session{session}/dialog/EmoEvaluation or "
                f"Session{session}/sentences/wav. {HINT}"
            )
        for emo_file in sorted(emo_dir.glob("*.txt")):
            for turn, label in read_emo_evaluation(emo_file):
                if label not in CLASSES:
                    continue
                dialog = turn[: turn.rindex("_")]
                wav = wav_dir / dialog / f"{turn}.wav"
                if not wav.is_file():
                    raise FileNotFoundError(
                        f"{emo_file} labels turn {turn}, but {wav} does not exist. {HINT}"
                    )
                spk = speaker_of(turn, session, speaker_assignment, emo_file.name)
                turns[turn] = (str(wav.resolve()), CLASSES[label], spk)
    if not turns:
        raise ValueError(f"No turn labelled neu/hap/exc/sad/ang under {data_folder}. {HINT}")
    if len(turns) != N_UTTERANCES:
        logger.warning(
            f"{len(turns)} turns of the 4 classes in {data_folder}; the full "
            f"IEMOCAP has {N_UTTERANCES} (fine for a subset or the demo corpus)."
        )
    return turns


def fold_speakers(test_spk_id):
    """(test speaker, validation speaker) of an MP3S fold (1-10).

    Example
    -------
    >>> fold_speakers(1), fold_speakers(10)
    ((1, 2), (10, 9))
    """
    test_spk_id = int(test_spk_id)
    if not 1 <= test_spk_id <= 10:
        raise ValueError(f"test_spk_id must be 1..10 (the MP3S folds), got {test_spk_id}.")
    return test_spk_id, test_spk_id + 1 if test_spk_id % 2 else test_spk_id - 1


def prepare_iemocap(
    data_folder,
    save_folder,
    test_spk_id=1,
    speaker_assignment="turn_name",
    skip_prep=False,
    check_audio=False,
    skip_bad_audio=False,
    num_workers=16,
):
    """Writes ``train.json``, ``valid.json`` and ``test.json`` of one fold.

    Arguments
    ---------
    data_folder : str
        The IEMOCAP_full_release folder.
    save_folder : str
        Where the JSON files go.
    test_spk_id : int
        The fold: the test speaker (1-10); the other speaker of its session
        is the validation set.
    speaker_assignment : str
        ``turn_name`` (each turn's own speaker) or ``mp3s`` (MP3S's
        assignment, see ``speaker_of``).
    skip_prep : bool
        Do nothing.
    check_audio : bool
        Decode every file fully to find truncated or corrupt ones now rather
        than during training.
    skip_bad_audio : bool
        Leave unreadable/truncated files out (counted in the log) instead of
        stopping.
    num_workers : int
        Threads reading (or decoding) the audio files.

    Example
    -------
    >>> import sys, tempfile
    >>> sys.path.insert(0, "tools")
    >>> from demo_iemocap import make_iemocap_demo
    >>> data = make_iemocap_demo("demo_data")
    >>> out = tempfile.mkdtemp()
    >>> prepare_iemocap(data, out, test_spk_id=3)
    >>> sorted({v["spk_id"] for v in json.load(open(os.path.join(out, "valid.json"))).values()})
    [4]
    """
    if skip_prep:
        logger.info("skip_prep: IEMOCAP preparation skipped.")
        return
    test_spk, valid_spk = fold_speakers(test_spk_id)
    check_speaker_assignment(speaker_assignment)
    save_folder = Path(save_folder)
    opts = {
        "data_folder": str(Path(data_folder).resolve()),
        "test_spk_id": test_spk,
        "speaker_assignment": speaker_assignment,
        "check_audio": bool(check_audio),
        "skip_bad_audio": bool(skip_bad_audio),
    }
    names = ("train.json", "valid.json", "test.json")
    try:
        done = json.loads((save_folder / OPTS_FILE).read_text())
    except (OSError, ValueError):
        done = None
    if done == opts and all((save_folder / n).exists() for n in names):
        logger.info(f"IEMOCAP fold {test_spk} already in {save_folder}: skipping preparation.")
        return
    turns = collect_turns(data_folder, speaker_assignment)
    infos = scan_audio(
        [wav for wav, _, _ in turns.values()], check_audio, skip_bad_audio,
        num_workers, report_file=save_folder / "bad_audio_iemocap.txt",
        what=f"IEMOCAP {data_folder}",
    )
    splits = {"train": {}, "valid": {}, "test": {}}
    for turn, (wav, label, spk) in sorted(turns.items()):
        if wav not in infos:
            continue
        split = "test" if spk == test_spk else "valid" if spk == valid_spk else "train"
        splits[split][turn] = {
            "wav": wav, "length": round(infos[wav].duration, 5),
            "emo": label, "spk_id": spk,
        }
    save_folder.mkdir(parents=True, exist_ok=True)
    for split, entries in splits.items():
        if not entries:
            raise ValueError(
                f"Fold {test_spk}: the {split} set is empty (no turn of speaker "
                f"{test_spk if split == 'test' else valid_spk} in {data_folder})."
            )
        write_text_atomic(save_folder / f"{split}.json", json.dumps(entries, indent=1))
    write_text_atomic(save_folder / OPTS_FILE, json.dumps(opts, indent=1))
    logger.info(
        f"IEMOCAP fold {test_spk} (valid speaker {valid_spk}): "
        + ", ".join(f"{s} {len(e)}" for s, e in splits.items()) + " turns."
    )
