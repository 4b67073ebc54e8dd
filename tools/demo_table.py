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
few hundred items), so smaller differences are noise. With the seed spread
of ``make evidence`` (``--spread``; by default
``<results>/evidence/spread_<mixer>.tsv`` when this machine has run it, else
the one shipped in ``tools/evidence/spread_<mixer>.tsv``, from the README's
3-seed run) the margin of a task is its measured spread instead: the
standard deviations over seeds of the two inputs compared, added.

Several results folders (``--runs``, one per seed: what
``tools/run_evidence.sh`` writes) give mean ± standard deviation per cell;
a difference of means within the two deviations added is "no difference".
``--write-spread`` saves the deviations for the single-seed demo's verdicts::

    python tools/demo_table.py --runs results/evidence/seed_{1,2,3} \
        --write-spread results/evidence/spread_summarymixing.tsv

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
# The seed spread of the README's make evidence run, for the verdicts of a
# make demo on a machine that has not run make evidence itself.
SHIPPED_SPREAD = Path(__file__).resolve().parent / "evidence"
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
    """A score, (CER, WER), or (mean, standard deviation, seeds)."""
    if score is None:
        return "not run"
    if isinstance(score, tuple) and len(score) == 3:
        return f"{score[0]:.1f} ± {score[1]:.1f}"
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


def aggregate(runs):
    """Rows of several runs (``collect`` of each seed's folder) as rows of
    ``(mean, standard deviation, n)`` per input (None where no run has it).

    Example
    -------
    >>> a = [("T", "acc", {"pretrained": 60.0, "random": (50.0, 90.0), "fbank": None}, False)]
    >>> b = [("T", "acc", {"pretrained": 64.0, "random": (54.0, 80.0), "fbank": None}, False)]
    >>> aggregate([a, b])[0][2]["pretrained"], aggregate([a, b])[0][2]["fbank"]
    ((62.0, 2.8284271247461903, 2), None)
    """
    import statistics

    rows = []
    for per_seed in zip(*runs):
        task, metric, _, lower = per_seed[0]
        scores = {}
        for init in INITS:
            values = [_main_value(r[2][init]) for r in per_seed if r[2][init] is not None]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            scores[init] = (statistics.fmean(values), sd, len(values)) if values else None
        rows.append((task, metric, scores, lower))
    return rows


def read_spread(path):
    """{task: {input: standard deviation}} of a ``--write-spread`` file."""
    spread = {}
    text = _read(path)
    for line in (text or "").strip().splitlines()[1:]:
        task, init, _, sd, _ = line.split("\t")
        spread.setdefault(task, {})[init] = float(sd)
    return spread


def write_spread(rows, path):
    """task, input, mean, standard deviation, seeds: one line each."""
    lines = ["task\tinput\tmean\tsd\tseeds"]
    for task, _, scores, _ in rows:
        for init in INITS:
            if scores[init] is not None:
                mean, sd, n = scores[init]
                lines.append(f"{task}\t{init}\t{mean:.3f}\t{sd:.3f}\t{n}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def margins_of(row, margin, spread=None):
    """{input: margin} against which the pretrained score of ``row`` is
    compared: the two inputs' deviations added (from the row itself when it
    aggregates seeds, else from ``spread``), or ``margin``.

    Example
    -------
    >>> row = ("T", "acc", {"pretrained": (60.0, 1.5, 3), "random": (50.0, 2.0, 3), "fbank": None}, False)
    >>> margins_of(row, 2.0)["random"]
    3.5
    >>> margins_of(("T", "acc", {"pretrained": 60.0, "random": 50.0, "fbank": 40.0}, False),
    ...            2.0, {"T": {"pretrained": 4.0, "random": 5.0}})
    {'random': 9.0, 'fbank': 2.0}
    """
    task, _, scores, _ = row
    out = {}
    for other in INITS[1:]:
        p, o = scores["pretrained"], scores[other]
        if isinstance(p, tuple) and len(p) == 3 and isinstance(o, tuple) and len(o) == 3:
            out[other] = p[1] + o[1]
        elif spread and task in spread and "pretrained" in spread[task] and other in spread[task]:
            out[other] = spread[task]["pretrained"] + spread[task][other]
        else:
            out[other] = margin
    return out


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
    margins = margin if isinstance(margin, dict) else {i: margin for i in INITS[1:]}

    def versus(other, name, init):
        side = compare(p, other, lower, margins[init])
        if side is None:
            return f"no {name} run"
        gap = abs(p - other)
        return {1: f"{gap:.1f} points better than {name}",
                -1: f"{gap:.1f} points worse than {name}",
                0: f"within {margins[init]:.3g} points of {name} (no difference)"}[side]

    vs_random = compare(p, r, lower, margins["random"])
    head = {1: "pretraining helped", 0: "pretraining did not help",
            -1: "pretraining hurt", None: "no baseline"}[vs_random]
    return f"{task}: {head}: {versus(r, 'random init', 'random')}; {versus(f, 'fbank', 'fbank')}."


def render(rows, mixer, margin, markdown=False, spread=None):
    """The table and the verdicts, as text (or a Markdown table)."""
    header = ["task", "metric", *(HEADERS[i] for i in INITS)]
    body = [[task, metric, *(_cell(scores[i]) for i in INITS)] for task, metric, scores, _ in rows]
    margins = [margins_of(row, margin, spread) for row in rows]
    verdicts = [verdict(row, m) for row, m in zip(rows, margins)]
    run = [(row, m) for row, m in zip(rows, margins)
           if row[2]["pretrained"] is not None and row[2]["random"] is not None]
    helped = [row[0] for row, m in run
              if compare(_main_value(row[2]["pretrained"]), _main_value(row[2]["random"]),
                         row[3], m["random"]) == 1]
    beat_fbank = [row[0] for row, m in run if row[2]["fbank"] is not None
                  and compare(_main_value(row[2]["pretrained"]), _main_value(row[2]["fbank"]),
                              row[3], m["fbank"]) == 1]
    seeds = any(isinstance(v, tuple) and len(v) == 3 for r in rows for v in r[2].values())
    rule = ("the two inputs' standard deviations over seeds, added" if seeds or spread
            else f"{margin:g} points")
    summary = (
        f"Pretraining beat random initialisation on {len(helped)} of {len(run)} tasks"
        + (f" ({'; '.join(helped)})" if helped else "")
        + f"; the pretrained encoder beat fbank features on {len(beat_fbank)}"
        + (f" ({'; '.join(beat_fbank)})" if beat_fbank else "")
        + f". (Better = by more than {rule}; the first number of a cell.)"
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
    parser.add_argument("--runs", nargs="+", default=None,
                        help="several results folders (one per seed): mean ± standard deviation")
    parser.add_argument("--spread", default=None,
                        help="seed spread of make evidence for the verdicts (default: "
                        "<results>/evidence/spread_<mixer>.tsv when it exists)")
    parser.add_argument("--write-spread", default=None,
                        help="with --runs: write the standard deviations here")
    args = parser.parse_args(argv)
    if args.runs:
        missing = [r for r in args.runs if not Path(r).is_dir()]
        if missing:
            parser.error(f"--runs: no such folder: {', '.join(missing)}")
        rows = aggregate([collect(r, args.mixer) for r in args.runs])
        spread = None
        if args.write_spread:
            write_spread(rows, args.write_spread)
    else:
        rows = collect(args.results, args.mixer)
        spread_file = args.spread or Path(args.results) / "evidence" / f"spread_{args.mixer}.tsv"
        if not args.spread and not Path(spread_file).is_file():
            spread_file = SHIPPED_SPREAD / f"spread_{args.mixer}.tsv"
        spread = read_spread(spread_file) if Path(spread_file).is_file() else None
        if args.spread and spread is None:
            parser.error(f"--spread: no such file: {args.spread}")
    sys.stdout.write(render(rows, args.mixer, args.margin, spread=spread))
    if args.markdown:
        Path(args.markdown).write_text(render(rows, args.mixer, args.margin, markdown=True, spread=spread))


if __name__ == "__main__":
    main()
