"""Reporting a run: the time, memory and throughput tables (text or
Markdown), the linear mixers' checks, the CSV and the plot.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import csv
import math
import warnings

from benchmarks.efficiency.constants import (
    BASELINES,
    FLOOR,
    MHSA,
    MIN_JUDGED_REPEATS,
    SPEECHBRAIN_REF,
    TIME_KEY,
)
from benchmarks.efficiency.rows import CSV_FIELDS, growth, row_label
from lobes.nnet.mixers import mixer_names

TIME_TITLE = (
    "Time per batch, seconds: min over the interleaved timed runs "
    "(median, interquartile range)"
)
WORK_TITLE = (
    "Work and throughput: matmul GFLOP (+ Mamba scan, analytic) / min time "
    "(ratio to the floor's throughput)"
)
MIXER_TITLE = (
    "The token mixers' own work: seconds inside the mixers (hooks: forward, "
    "+ backward in a training step; least over the runs) and their share of "
    "the step, their GFLOP and GFLOP/s (ratio to the floor's throughput); "
    "then the rest of the model's GFLOP/s (ratio to the floor's)"
)


def fmt(x, digits=3):
    """``x`` with ``digits`` decimals ("—" for NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def fmt_sig(x, digits=3):
    """``x`` with ``digits`` significant digits ("—" for NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}"


def fmt_mem(x):
    """Megabytes: no decimal from 10 MB, one below ("—" for NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"


def mem_key(mode):
    """The memory column of ``mode``: with the weights for the paper
    protocol, over the model otherwise."""
    return "mem_with_weights_mb" if mode == "paper" else "mem_peak_mb"


def failed_reason(r):
    """``failed: <reason>`` for a row whose point failed to build or run
    (its ``status``), None for a measured one.

    Example
    -------
    >>> failed_reason({"status": "error: ValueError: no | such"})
    'failed: ValueError: no / such'
    >>> failed_reason({"status": "OOM"}), failed_reason({"status": "ok"})
    ('failed: OOM', None)
    """
    status = r["status"]
    if status == "ok":
        return None
    reason = status[len("error: "):] if status.startswith("error: ") else status
    return "failed: " + reason.replace("|", "/")  # a "|" would split a Markdown cell


def timed_runs(rows):
    """The fewest timed runs per point among ``rows`` (their ``repeats``;
    0 where a row does not say)."""
    return min((r.get("repeats") or 0 for r in rows), default=0)


def verdict(ok, repeats):
    """``PASS`` or ``FAIL``; from fewer than ``MIN_JUDGED_REPEATS`` timed
    runs per point, ``not judged: <repeats> repeats < 5`` instead.

    Example
    -------
    >>> verdict(True, 5), verdict(False, 7), verdict(True, 2)
    ('PASS', 'FAIL', 'not judged: 2 repeats < 5')
    """
    if repeats < MIN_JUDGED_REPEATS:
        return f"not judged: {repeats} repeats < {MIN_JUDGED_REPEATS}"
    return "PASS" if ok else "FAIL"


class _Cells:
    """The cells of the tables of one mode: a value, then its ratios to the
    reference (SpeechBrain's encoder if measured, else mhsa) and to mhsa;
    ``failed: <reason>`` for a point that failed.

    Arguments
    ---------
    rows : list of dict
        The result rows of one mode, ``add_ratios`` applied.
    mode : str
        ``forward``, ``train`` or ``paper``.
    """

    def __init__(self, rows, mode):
        self.mem_key = mem_key(mode)
        self.ref = next(
            (b for b in (SPEECHBRAIN_REF, MHSA) if any(r["mixer"] == b for r in rows)), None
        )
        self.ref_short = {SPEECHBRAIN_REF: "SB", MHSA: MHSA, None: ""}[self.ref]
        self.also_mhsa = self.ref != MHSA and any(r["mixer"] == MHSA for r in rows)

    def _ratios(self, r, what):
        parts = []
        if self.ref:
            parts.append(f"{fmt(r.get(f'{what}_ratio_{self.ref}'), 2)} {self.ref_short}")
        if self.also_mhsa:
            parts.append(f"{fmt(r.get(f'{what}_ratio_{MHSA}'), 2)} {MHSA}")
        return ", ".join(parts)

    def time(self, r):
        """Minimum time (median, IQR) [ratios], and the speed-up over fp32 eager."""
        if failed_reason(r):
            return failed_reason(r)
        cell = (
            f"{fmt(r[TIME_KEY])} (med {fmt(r.get('time_median_s'))}, IQR "
            f"{fmt(r.get('time_q1_s'))}-{fmt(r.get('time_q3_s'))}) [{self._ratios(r, 'time')}]"
        )
        if r.get("precision", "fp32") != "fp32" or r.get("compile"):
            cell += f" {fmt(r.get('time_ratio_fp32'), 2)}x fp32-eager"
        return cell

    def mem(self, r):
        """Peak memory [ratios]."""
        if failed_reason(r):
            return failed_reason(r)
        return f"{fmt_mem(r[self.mem_key])} [{self._ratios(r, 'mem')}]"

    def work(self, r):
        """GFLOP, GFLOP/s and the throughput over the floor's."""
        if failed_reason(r):
            return failed_reason(r)
        return (
            f"{fmt_sig(r.get('gflop'))} GFLOP, {fmt_sig(r.get('gflops_per_s'))} GFLOP/s "
            f"({fmt(r.get('throughput_ratio_floor'), 2)} floor)"
        )

    def mixers(self, r):
        """The mixers' time, share, GFLOP, GFLOP/s (over the floor's); the
        rest's GFLOP/s (over the floor's). The floor: its throughput."""
        if failed_reason(r):
            return failed_reason(r)
        floor = r.get("gflops_per_s", float("nan")) / r["throughput_ratio_floor"] if r.get(
            "throughput_ratio_floor") else float("nan")
        rest = r.get("rest_gflops_per_s", float("nan"))
        if r["mixer"] == FLOOR:
            return f"identity mixers; the floor: {fmt_sig(r.get('gflops_per_s'))} GFLOP/s"
        share = r.get("mixer_share", float("nan"))
        return (
            f"{fmt(r.get('mixer_time_min_s'))} s ({fmt(100 * share, 0)}%), "
            f"{fmt_sig(r.get('mixer_gflop'))} GFLOP, {fmt_sig(r.get('mixer_gflops_per_s'))} GFLOP/s "
            f"({fmt(r.get('mixer_throughput_ratio_floor'), 2)} floor); rest "
            f"{fmt_sig(rest)} GFLOP/s ({fmt(rest / floor, 2)} floor)"
        )


def _growth_name(rows, mode):
    """The growth column's name, e.g. ``80s/20s`` (``growth`` with fewer
    than two durations)."""
    _, short, longest = growth(rows, mode, row_label(rows[0]))
    return f"{longest:g}s/{short:g}s" if short is not None else "growth"


def _render(title, cols, body, markdown=False):
    """A titled table as lines: Markdown, or columns aligned with spaces."""
    if markdown:
        lines = [f"**{title}**\n", "| " + " | ".join(cols) + " |"]
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines.extend("| " + " | ".join(line) + " |" for line in body)
    else:
        widths = [max(len(x) for x in col) for col in zip(cols, *body)]
        lines = [title] + ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [cols] + body]
    return lines + [""]


def model_table(rows, mode, title, cell, key, markdown=False):
    """One table of ``mode`` as lines: a line per model (and precision), its
    width and parameters, ``cell(row)`` per duration, then the growth of
    ``key``.

    Example
    -------
    >>> rows = [{"mode": "forward", "mixer": "m", "seconds": s, "time_min_s": t,
    ...          "d_model": 8, "params_m": 1.0} for s, t in ((1.0, 1.0), (4.0, 3.0))]
    >>> print("\\n".join(model_table(rows, "forward", "T", lambda r: str(r["time_min_s"]), "time_min_s")))
    T
    model  d_model  params  1 s  4 s  4s/1s
    m      8        1.0M    1.0  3.0  3.00x
    """
    labels = list(dict.fromkeys(row_label(r) for r in rows))
    lengths = sorted({r["seconds"] for r in rows})
    index = {(row_label(r), r["seconds"]): r for r in rows}
    cols = ["model", "d_model", "params"] + [f"{s:g} s" for s in lengths]
    cols.append(_growth_name(rows, mode))
    body = []
    for label in labels:
        first = next(index[(label, s)] for s in lengths if (label, s) in index)
        d_model, params = first.get("d_model", ""), first.get("params_m")
        line = [label, "—" if d_model is None else str(d_model)]
        line.append("—" if params is None or math.isnan(params) else f"{params:.1f}M")
        line += [cell(index[(label, s)]) if (label, s) in index else "" for s in lengths]
        g = growth(rows, mode, label, key)[0]
        line.append("—" if math.isnan(g) else f"{g:.2f}x")
        body.append(line)
    return _render(title, cols, body, markdown)


def _compile_lines(rows, markdown=False):
    """The compile time and output difference of each compiled row."""
    compiled = [r for r in rows if r.get("compile")]
    if not compiled:
        return []
    out = ["torch.compile: first call (compile) time, largest |compiled - eager| output:"]
    for r in compiled:
        out.append(
            f"{'- ' if markdown else '  '}{row_label(r)} {r['seconds']:g} s: "
            f"{fmt(r['compile_s'], 1)} s, {r['compile_max_abs_diff']:.2e}"
        )
    return out + [""]


def format_tables(rows, mode, header, markdown=False):
    """The time, memory and throughput tables of ``mode`` as text (or
    Markdown): one line per model (and precision), one column per duration,
    then the growth; then the compile times and the linear mixers' checks."""
    rows = [r for r in rows if r["mode"] == mode]
    cells = _Cells(rows, mode)
    out = [header, ""]
    out.append(
        f"Cells: value [ratio to {'SpeechBrain (SB) and ' if cells.ref == SPEECHBRAIN_REF else ''}"
        "mhsa at the same length, same run; < 1 is cheaper]. "
        f"Last column: growth {_growth_name(rows, mode)} of the minima (4x linear, 16x quadratic)."
    )
    out.append("")
    out += model_table(rows, mode, TIME_TITLE, cells.time, TIME_KEY, markdown)
    mem_title = (
        "Peak memory of the step including the weights, MB"
        if mode == "paper"
        else "Peak memory over the model, MB"
    )
    out += model_table(rows, mode, mem_title, cells.mem, cells.mem_key, markdown)
    if any(not math.isnan(r.get("gflop", float("nan"))) for r in rows):
        out += model_table(rows, mode, WORK_TITLE, cells.work, "gflop", markdown)
    if any(not math.isnan(r.get("mixer_time_min_s", float("nan"))) for r in rows):
        out += model_table(rows, mode, MIXER_TITLE, cells.mixers, "mixer_time_min_s", markdown)
    out += _compile_lines(rows, markdown)
    out += check_linear(rows, mode, markdown)
    out += check_mamba_step(rows, mode, markdown)
    return "\n".join(out)


# Issue 23's paper-protocol criteria: Mamba's step against SummaryMixing's.
MAMBA_STEP_LIMITS = {"memory": 1.1, "time": 1.3}


def check_mamba_step(rows, mode, markdown=False):
    """Paper protocol: at each duration where both ran, mamba's peak memory
    (with the weights) and time over summarymixing's, against
    ``MAMBA_STEP_LIMITS`` (fp32 eager rows; no verdict from fewer than
    ``MIN_JUDGED_REPEATS`` timed runs).

    Example
    -------
    >>> rows = [{"mode": "paper", "mixer": m, "seconds": 40.0, "status": "ok", "repeats": 10,
    ...          "time_min_s": t, "mem_with_weights_mb": mb}
    ...         for m, t, mb in (("summarymixing", 1.0, 1000.0), ("mamba", 1.2, 1150.0))]
    >>> print("\\n".join(check_mamba_step(rows, "paper")))
    mamba vs summarymixing (paper protocol, same run):
      40 s: memory x1.15 (<= 1.1: FAIL), time x1.20 (<= 1.3: PASS)
    <BLANKLINE>
    """
    if mode != "paper":
        return []
    rows = [r for r in rows if r["mode"] == mode and r.get("precision", "fp32") == "fp32"
            and not r.get("compile")]
    index = {(r["mixer"], r["seconds"]): r for r in rows}
    lengths = sorted({s for m, s in index if m == "mamba" and ("summarymixing", s) in index})
    if not lengths:
        return []
    bullet = "- " if markdown else "  "
    repeats = timed_runs(rows)
    out = ["mamba vs summarymixing (paper protocol, same run):"]
    for s in lengths:
        mamba, ref = index[("mamba", s)], index[("summarymixing", s)]
        if mamba["status"] != "ok" or ref["status"] != "ok":
            out.append(f"{bullet}{s:g} s: not judged ({failed_reason(mamba) or failed_reason(ref)})")
            continue
        parts = []
        for what, key in (("memory", "mem_with_weights_mb"), ("time", TIME_KEY)):
            ratio = mamba[key] / ref[key]
            limit = MAMBA_STEP_LIMITS[what]
            parts.append(f"{what} x{ratio:.2f} (<= {limit:g}: {verdict(ratio <= limit, repeats)})")
        out.append(f"{bullet}{s:g} s: " + ", ".join(parts))
    return out + [""]


def check_linear(rows, mode, markdown=False):
    """Lines stating, at the longest duration, whether each linear mixer
    (``mixer_names(linear=True)``) is faster and lighter than mhsa and grows
    about linearly (<= 4.5x over a 4x longer input) while mhsa grows faster
    (fp32, eager rows). A failed point is named with its reason; with fewer
    than ``MIN_JUDGED_REPEATS`` timed runs per point no verdict is given."""
    rows = [
        r for r in rows
        if r["mode"] == mode and r.get("precision", "fp32") == "fp32" and not r.get("compile")
    ]
    if not rows:
        return []
    longest = max(r["seconds"] for r in rows)
    index = {(r["mixer"], r["seconds"]): r for r in rows}
    ref = index.get((MHSA, longest))
    if ref is None:
        return []
    bullet = "- " if markdown else "  "
    out = [f"Check at {longest:g} s (linear mixers vs mhsa, same run):"]
    if ref["status"] != "ok":
        return out + [f"{bullet}not judged: {MHSA} {failed_reason(ref)}", ""]
    key = mem_key(mode)
    repeats = timed_runs(rows)
    g_ref, short, _ = growth(rows, mode, MHSA, TIME_KEY)
    if short is not None:
        out.append(f"{bullet}mhsa: time {longest:g}s/{short:g}s = {fmt(g_ref, 2)}x")
    linear_mixers = mixer_names(linear=True)
    for m in dict.fromkeys(r["mixer"] for r in rows):
        r = index.get((m, longest))
        if m not in linear_mixers or r is None:
            continue
        if r["status"] != "ok":
            out.append(f"{bullet}{m}: {failed_reason(r)}")
            continue
        faster = r[TIME_KEY] < ref[TIME_KEY]
        lighter = r[key] < ref[key]
        line = (
            f"{bullet}{m}: time x{fmt(r['time_ratio_mhsa'], 2)} "
            f"({'faster' if faster else 'SLOWER'}), memory "
            f"x{fmt(r['mem_ratio_mhsa'], 2)} "
            f"({'lighter' if lighter else 'HEAVIER'})"
        )
        ok = faster and lighter
        if short is not None:
            g, _, _ = growth(rows, mode, m, TIME_KEY)
            linear = g <= 4.5 and g < g_ref  # False when not measured (NaN)
            ok = ok and linear
            line += (
                f", time {longest:g}s/{short:g}s {fmt(g, 2)}x "
                f"({'about linear' if linear else 'NOT linear'})"
            )
        out.append(f"{line}: {verdict(ok, repeats)}")
    out.append("")
    return out


def write_csv(rows, path):
    """Writes ``rows`` (``CSV_FIELDS`` columns) to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
            )


def plot(rows, mode, path, title, logy=False):
    """Time and memory vs duration, one line per model (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plot written")
        return False
    rows = [r for r in rows if r["mode"] == mode and r["status"] == "ok"]
    mem_key = "mem_with_weights_mb" if mode == "paper" else "mem_peak_mb"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(row_label(r) for r in rows):
        pts = sorted((r["seconds"], r) for r in rows if row_label(r) == label)
        xs = [s for s, _ in pts]
        style = "--" if pts[0][1]["mixer"] in BASELINES + (FLOOR,) else "-"
        axes[0].errorbar(
            xs,
            [r[TIME_KEY] for _, r in pts],
            yerr=[[0.0] * len(pts), [r["time_median_s"] - r[TIME_KEY] for _, r in pts]],
            fmt=style + "o",
            ms=4,
            capsize=2,
            label=label,
        )
        axes[1].plot(xs, [r[mem_key] for _, r in pts], style + "o", ms=4, label=label)
    axes[0].set_ylabel("time per batch, min (bar: to median) (s)")
    axes[1].set_ylabel("peak memory (MB)")
    for ax in axes:
        ax.set_xlabel("utterance duration (s)")
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
