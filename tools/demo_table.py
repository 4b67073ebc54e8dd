#!/usr/bin/env python3
"""The demo's verdict: each MP3S probe on the pretrained encoder, on the same
encoder at random initialisation, and on fbank features alone.

``tools/run_probes.sh`` trains every probe three times (``encoder_init:
pretrained | random | fbank``, same seed, same epochs) into
``<results>/<task folder>_<mixer>[_random|_fbank]``; this script reads their
result files and prints one table (task, metric, the three scores) and, in
words, whether pretraining helped on each task::

    python tools/demo_table.py --results results --mixer summarymixing [--markdown table.md]

A score counts as better than another when it is better by more than
``--margin`` points (2 by default): the demo test sets are small (32 to a
few hundred items), so smaller differences are noise.

The fine-tuning rows (``tools/run_finetune_demo.sh``) are read from
``<results>/demo_finetune_<mixer>/demo_row.tsv``: one line per row,
``task<TAB>metric<TAB>pretrained<TAB>random init<TAB>fbank`` (numbers in
percent, lower is better, ``-`` for a column it does not have).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import re
import sys
from pathlib import Path

INITS = ("pretrained", "random", "fbank")
HEADERS = {"pretrained": "pretrained", "random": "random init", "fbank": "fbank"}


def _read(path):
    path = Path(path)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def asr_scores(folder, test_set):
    """(CER, WER) in percent of the greedy decoding of ``test_set`` in the
    ``train_log.txt`` of an ASR probe, or None.

    Example
    -------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "train_log.txt").write_text(
    ...     "Epoch loaded: 2, test set: test, layer_weights: [0.5, 0.5] - "
    ...     "test loss: 3.1, test WER: 80.5, test CER: 41.25, test WER_beam: 79.0\\n")
    >>> asr_scores(d, "test")
    (41.25, 80.5)
    """
    text = _read(Path(folder) / "train_log.txt")
    if text is None:
        return None
    lines = [l for l in text.splitlines() if f"test set: {test_set}," in l]
    if not lines:
        return None
    wer = re.search(r"test WER: ([0-9.e+-]+)", lines[-1])
    cer = re.search(r"test CER: ([0-9.e+-]+)", lines[-1])
    if not (wer and cer):
        return None
    return float(cer.group(1)), float(wer.group(1))


def eer_score(folder):
    """EER in percent from ``verification.txt`` of the VoxCeleb probe."""
    text = _read(Path(folder) / "verification.txt")
    match = text and re.search(r"EER: ([0-9.]+)%", text.strip().splitlines()[-1])
    return float(match.group(1)) if match else None


def iemocap_score(folder):
    """Mean 10-fold accuracy in percent from ``cv_accuracy.txt``."""
    text = _read(Path(folder) / "cv_accuracy.txt")
    match = text and re.search(r"folds: ([0-9.]+)%", text)
    return float(match.group(1)) if match else None


def slurp_score(folder):
    """Scenario accuracy in percent from ``test_results.txt``."""
    text = _read(Path(folder) / "test_results.txt")
    match = text and re.search(r"scenario accuracy: ([0-9.]+)", text)
    return 100 * float(match.group(1)) if match else None


# (task, metric, folder stem, reader, lower is better)
TASKS = [
    ("LibriSpeech ASR, test-clean", "CER % (WER %)", "demo_asr_bilstm",
     lambda f: asr_scores(f, "test-clean"), True),
    ("Buckeye ASR", "CER % (WER %)", "demo_buckeye_bilstm", lambda f: asr_scores(f, "test"), True),
    ("Common Voice cy ASR", "CER % (WER %)", "demo_cv_cy_bilstm", lambda f: asr_scores(f, "test"), True),
    ("Common Voice eu ASR", "CER % (WER %)", "demo_cv_eu_bilstm", lambda f: asr_scores(f, "test"), True),
    ("VoxCeleb1 verification", "EER %", "demo_voxceleb_ecapa", eer_score, True),
    ("IEMOCAP emotion, 10 folds", "accuracy %", "demo_iemocap_linear", iemocap_score, False),
    ("SLURP scenario", "accuracy %", "demo_slurp_linear", slurp_score, False),
]


def run_folder(results, stem, mixer, init):
    """Where ``run_probes.sh`` puts the probe of ``stem`` for ``init``."""
    suffix = "" if init == "pretrained" else f"_{init}"
    return Path(results) / f"{stem}_{mixer}{suffix}"


def _cell(score):
    if score is None:
        return "not run"
    if isinstance(score, tuple):
        return f"{score[0]:.1f} ({score[1]:.1f})"
    return f"{score:.1f}"


def _main_value(score):
    return score[0] if isinstance(score, tuple) else score


def compare(a, b, lower_is_better, margin):
    """+1 if ``a`` is better than ``b`` by more than ``margin``, -1 if worse,
    0 otherwise (None if either is missing).

    Example
    -------
    >>> compare(30.0, 45.0, True, 2), compare(70.0, 69.0, False, 2), compare(None, 1.0, True, 2)
    (1, 0, None)
    """
    if a is None or b is None:
        return None
    diff = (b - a) if lower_is_better else (a - b)
    return 1 if diff > margin else (-1 if diff < -margin else 0)


def collect(results, mixer):
    """Rows ``(task, metric, {init: score}, lower_is_better)`` of every task
    (scores None where a run is missing), then the fine-tuning rows if any."""
    rows = []
    for task, metric, stem, reader, lower in TASKS:
        scores = {init: reader(run_folder(results, stem, mixer, init)) for init in INITS}
        rows.append((task, metric, scores, lower))
    finetune = _read(Path(results) / f"demo_finetune_{mixer}" / "demo_row.tsv")
    for line in (finetune or "").strip().splitlines():
        fields = line.split("\t")
        task, metric, values = fields[0], fields[1], fields[2:5]
        scores = {
            init: (None if v.strip() in ("", "-") else float(v))
            for init, v in zip(INITS, values)
        }
        rows.append((task, metric, scores, True))
    return rows


def verdict(row, margin):
    """One sentence on whether pretraining helped on this row's task: the
    pretrained encoder against the same architecture at random
    initialisation (what pretraining adds), then against fbank features
    alone (whether the encoder beats its own input).

    Example
    -------
    >>> verdict(("ASR", "CER %", {"pretrained": (56.7, 99.0), "random": (79.6, 99.8),
    ...          "fbank": (52.2, 101.0)}, True), 2.0)
    'ASR: pretraining helped: 22.9 points better than random init; 4.5 points worse than fbank.'
    """
    task, _, scores, lower = row
    p, r, f = (None if scores[i] is None else _main_value(scores[i]) for i in INITS)
    if p is None:
        return f"{task}: not run."

    def versus(other, name):
        side = compare(p, other, lower, margin)
        if side is None:
            return f"no {name} run"
        gap = abs(p - other)
        return {1: f"{gap:.1f} points better than {name}",
                -1: f"{gap:.1f} points worse than {name}",
                0: f"within {margin:g} points of {name}"}[side]

    vs_random = compare(p, r, lower, margin)
    head = {1: "pretraining helped", 0: "pretraining did not help",
            -1: "pretraining hurt", None: "no baseline"}[vs_random]
    return f"{task}: {head}: {versus(r, 'random init')}; {versus(f, 'fbank')}."


def render(rows, mixer, margin, markdown=False):
    """The table and the verdicts, as text (or a Markdown table)."""
    header = ["task", "metric", *(HEADERS[i] for i in INITS)]
    body = [[task, metric, *(_cell(scores[i]) for i in INITS)] for task, metric, scores, _ in rows]
    verdicts = [verdict(row, margin) for row in rows]
    run = [row for row in rows if row[2]["pretrained"] is not None and row[2]["random"] is not None]
    helped = [row[0] for row in run
              if compare(_main_value(row[2]["pretrained"]), _main_value(row[2]["random"]),
                         row[3], margin) == 1]
    beat_fbank = [row[0] for row in run if row[2]["fbank"] is not None
                  and compare(_main_value(row[2]["pretrained"]), _main_value(row[2]["fbank"]),
                              row[3], margin) == 1]
    summary = (
        f"Pretraining beat random initialisation on {len(helped)} of {len(run)} tasks"
        + (f" ({'; '.join(helped)})" if helped else "")
        + f"; the pretrained encoder beat fbank features on {len(beat_fbank)}"
        + (f" ({'; '.join(beat_fbank)})" if beat_fbank else "")
        + f". (Better = by more than {margin:g} points; the first number of a cell.)"
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines + [""] + [f"* {v}" for v in verdicts] + ["", summary]) + "\n"
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"MP3S probes on the demo corpora, frozen {mixer} demo encoder vs its baselines:",
             fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in body]
    lines += ["", *verdicts, "", summary]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results", help="results folder of run_probes.sh")
    parser.add_argument("--mixer", default="summarymixing")
    parser.add_argument("--margin", type=float, default=2.0,
                        help="points a score must win by to count as better (2)")
    parser.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    rows = collect(args.results, args.mixer)
    sys.stdout.write(render(rows, args.mixer, args.margin))
    if args.markdown:
        Path(args.markdown).write_text(render(rows, args.mixer, args.margin, markdown=True))


if __name__ == "__main__":
    main()
