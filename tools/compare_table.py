#!/usr/bin/env python3
"""The five-mixer table of ``tools/compare_mixers.sh`` (``make compare``).

For each mixer pretrained on the demo corpus with the same budget, from its
run folders under ``--results``: the validation masked-prediction accuracy
of the last epoch beside its chance level (the share of the most frequent
target code), the median seconds per pretraining step, the peak resident
memory of the pretraining process, the parameter count (with the head), and
the scores of the probes that were run (``tools/demo_table.py`` reads
them)::

    python tools/compare_table.py --results results/compare \\
        --mixers mhsa,hypermixing,fastformer,summarymixing,mamba

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_table import TASKS, _cell, _read, run_folder  # noqa: E402


def _fields(line):
    """``key: value`` pairs of a SpeechBrain log line, as floats where they
    parse."""
    out = {}
    for key, value in re.findall(r"([A-Za-z_ ]+): ([^,]+?)(?=,| -|$)", line):
        try:
            out[key.strip()] = float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def pretraining_stats(folder):
    """Masked accuracy, its chance level, seconds per step, steps and
    trainable parameters (encoder and head) of the pretraining run in
    ``folder``.

    Example
    -------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "train_log.txt").write_text(
    ...     "epoch: 6, steps: 594, lr: 5.19e-04 - train loss: 5.69, train masked_acc: "
    ...     "9.55e-02 - valid loss: 6.44, valid masked_acc: 5.22e-02\\n")
    >>> _ = (d / "train_steps_log.txt").write_text(
    ...     "step: 10, masked_acc: 1e-3, top_code_share: 3e-2\\n"
    ...     "step: 20, masked_acc: 2e-2, top_code_share: 2e-2, sec_per_step: 0.7\\n")
    >>> s = pretraining_stats(d)
    >>> s["valid_acc"], s["chance"], s["sec_per_step"], s["steps"]
    (5.22, 2.5, 0.7, 594)
    """
    folder = Path(folder)
    log = _read(folder / "train_log.txt")
    steps_log = _read(folder / "train_steps_log.txt")
    if not log or not steps_log:
        return None
    last = [l for l in log.splitlines() if l.startswith("epoch:")][-1]
    valid = _fields(last.split(" - ")[-1])
    steps = [_fields(l) for l in steps_log.splitlines() if l.startswith("step:")]
    chance = [s["top_code_share"] for s in steps if "top_code_share" in s]
    seconds = [s["sec_per_step"] for s in steps if "sec_per_step" in s]
    params = None
    info = _read(folder / "log.txt")
    match = info and re.search(r"Total Number of Trainable Parameters: ([0-9.]+[KMG]?)", info)
    if match:
        params = match.group(1)
    return {
        "valid_acc": round(100 * valid["valid masked_acc"], 2),
        "chance": round(100 * statistics.mean(chance), 2) if chance else None,
        "sec_per_step": round(statistics.median(seconds), 3) if seconds else None,
        "steps": int(_fields(last)["steps"]),
        "params": params,
    }


def collect(results, mixers):
    """One row per mixer: its pretraining statistics, peak memory and probe
    scores (None where missing)."""
    rows = []
    for mixer in mixers:
        stats = pretraining_stats(Path(results) / f"demo_bestrq_{mixer}") or {}
        rss = _read(Path(results) / f"peak_rss_kb_{mixer}.txt")
        kb = re.findall(r"^\d+$", rss or "", flags=re.M)
        stats["peak_rss_mb"] = round(int(kb[-1]) / 1024) if kb else None
        stats["probes"] = {
            task: reader(run_folder(results, stem, mixer, "pretrained"))
            for task, _, stem, reader, _ in TASKS
        }
        rows.append((mixer, stats))
    return rows


def render(rows, markdown=False):
    """The table (text or Markdown)."""
    probe_tasks = [
        (task, metric) for task, metric, *_ in TASKS
        if any(stats["probes"].get(task) is not None for _, stats in rows)
    ]
    header = ["mixer", "params (with head)", "steps", "valid masked acc % (chance)",
              "s / step", "peak RSS MB", *(f"{t}: {m}" for t, m in probe_tasks)]
    body = []
    for mixer, s in rows:
        acc = "not run" if s.get("valid_acc") is None else f"{s['valid_acc']:.1f} ({s['chance']:.1f})"
        body.append([
            mixer, str(s.get("params") or "-"), str(s.get("steps", "-")), acc,
            "-" if s.get("sec_per_step") is None else f"{s['sec_per_step']:.2f}",
            "-" if s.get("peak_rss_mb") is None else str(s["peak_rss_mb"]),
            *(_cell(s["probes"][t]) for t, _ in probe_tasks),
        ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = ["Five mixers on the demo, same pretraining budget:", fmt.format(*header)]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results/compare")
    parser.add_argument("--mixers", default="mhsa,hypermixing,fastformer,summarymixing,mamba")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    rows = collect(args.results, [m for m in args.mixers.split(",") if m])
    sys.stdout.write(render(rows))
    if args.markdown:
        Path(args.markdown).write_text(render(rows, markdown=True))


if __name__ == "__main__":
    main()
