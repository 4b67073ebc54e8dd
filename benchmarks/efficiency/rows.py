"""Result rows: one per measured point (its times summarised), the ratios
between the rows of one run, and the CSV columns.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math
import statistics

from benchmarks.efficiency.constants import (
    BASELINES,
    FLOOR,
    FRAMES_PER_SECOND,
    TIME_KEY,
)

CSV_FIELDS = [
    "protocol",
    "mode",
    "precision",
    "compile",
    "device",
    "mixer",
    "seconds",
    "frames",
    "batch",
    "size",
    "frontend",
    "num_layers",
    "d_model",
    "d_ffn",
    "params_m",
    "repeats",
    "warmup",
    "time_min_s",
    "time_median_s",
    "time_q1_s",
    "time_q3_s",
    "time_mean_s",
    "time_std_s",
    "step_time_min_s",
    "cpu_min_s",
    "mem_peak_mb",
    "mem_total_mb",
    "mem_with_weights_mb",
    "gflop",
    "gflops_per_s",
    "throughput_ratio_floor",
    "mixer_time_min_s",
    "mixer_share",
    "mixer_gflop",
    "mixer_gflops_per_s",
    "mixer_throughput_ratio_floor",
    "rest_time_min_s",
    "rest_gflops_per_s",
    *(f"{what}_ratio_{base}" for base in BASELINES for what in ("time", "mem")),
    "time_ratio_fp32",
    "compile_s",
    "compile_max_abs_diff",
    "mem_method",
    "status",
]


def _quantile(sorted_values, q):
    """Linear-interpolated quantile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_times(times):
    """Min, median, quartiles, mean and std of a list of run times.

    Example
    -------
    >>> s = summarize_times([3.0, 1.0, 2.0, 10.0])
    >>> s["time_min_s"], s["time_median_s"], s["time_q1_s"], s["time_q3_s"]
    (1.0, 2.5, 1.75, 4.75)
    """
    nan = float("nan")
    if not times:
        keys = ("min", "median", "q1", "q3", "mean", "std")
        return {f"time_{k}_s": nan for k in keys}
    ordered = sorted(times)
    return {
        "time_min_s": ordered[0],
        "time_median_s": statistics.median(ordered),
        "time_q1_s": _quantile(ordered, 0.25),
        "time_q3_s": _quantile(ordered, 0.75),
        "time_mean_s": statistics.mean(ordered),
        "time_std_s": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
    }


def result_row(spec, info, runs, status, flops=None, extras=None):
    """A result row (``CSV_FIELDS`` and ``times_s``) from the runs of one point.

    Arguments
    ---------
    spec : dict
        The point's ``Point`` arguments (and ``repeats``, ``warmup``).
    info : dict or None
        ``build_model``'s info (None: the point was not built).
    runs : list of list
        Per kept run: seconds, peak MB over the model, absolute peak MB,
        peak MB with the weights, step seconds, CPU seconds, and (optional)
        seconds inside the token mixers.
    status : str
        ``ok`` or the failure (``OOM``, a timeout, ``error: ...``).
    flops : int or list, optional
        Work of one step (``Point.flops``): total, or ``[total, mixers]``.
    extras : dict, optional
        ``compile_s``, ``compile_max_abs_diff``, ``mem_method``.
    """
    nan = float("nan")
    ok = status == "ok" and bool(runs)
    times = [r[0] for r in runs] if ok else []
    flops, flops_mixers = (flops, None) if not isinstance(flops, (list, tuple)) else flops
    row = {
        **{k: spec.get(k) for k in ("mixer", "seconds", "batch", "size", "device")},
        "protocol": spec.get("protocol", "default"),
        "mode": "paper" if spec.get("protocol") == "paper" else spec.get("mode", "forward"),
        "precision": spec.get("precision", "fp32"),
        "compile": bool(spec.get("compile", False)),
        "frames": int(round(spec["seconds"] * FRAMES_PER_SECOND)),
        "repeats": spec.get("repeats"),
        "warmup": spec.get("warmup"),
        **{k: (info or {}).get(k) for k in ("frontend", "num_layers", "d_model", "d_ffn")},
        "params_m": round(info["params_m"], 3) if info else nan,
        **summarize_times(times),
        "times_s": times,
        "step_time_min_s": min(r[4] for r in runs) if ok else nan,
        "cpu_min_s": min(r[5] for r in runs) if ok else nan,
        "mem_peak_mb": max(r[1] for r in runs) if ok else nan,
        "mem_total_mb": max(r[2] for r in runs) if ok else nan,
        "mem_with_weights_mb": max(r[3] for r in runs) if ok else nan,
        "gflop": flops / 1e9 if (ok and flops) else nan,
        "compile_s": (extras or {}).get("compile_s", nan),
        "compile_max_abs_diff": (extras or {}).get("compile_max_abs_diff", nan),
        "mem_method": (extras or {}).get("mem_method", ""),
        "status": status,
    }
    row["gflops_per_s"] = row["gflop"] / row[TIME_KEY] if ok else nan
    row.update(_mixer_part(runs if ok else [], row["gflop"], flops_mixers))
    return row


def _mixer_part(runs, gflop, flops_mixers):
    """The token mixers' share of the timed runs: their least time (each
    run's seconds inside the mixers, ``runs[i][6]``), its share of that
    run, their work and throughput, and the same for the rest of the model
    (each run's time outside the mixers)."""
    nan = float("nan")
    mixer = [(r[6], r[0]) for r in runs if len(r) > 6 and r[6] is not None and not math.isnan(r[6])]
    part = dict.fromkeys(
        ("mixer_time_min_s", "mixer_share", "mixer_gflop", "mixer_gflops_per_s",
         "rest_time_min_s", "rest_gflops_per_s"), nan,
    )
    if not mixer:
        return part
    part["mixer_time_min_s"] = min(m for m, _ in mixer)
    part["mixer_share"] = min(mixer, key=lambda mt: mt[1])[0] / min(t for _, t in mixer)
    part["rest_time_min_s"] = min(t - m for m, t in mixer)
    if flops_mixers is not None and not math.isnan(gflop):
        part["mixer_gflop"] = flops_mixers / 1e9
        if part["mixer_time_min_s"] > 0:
            part["mixer_gflops_per_s"] = part["mixer_gflop"] / part["mixer_time_min_s"]
        if part["rest_time_min_s"] > 0:
            part["rest_gflops_per_s"] = (gflop - part["mixer_gflop"]) / part["rest_time_min_s"]
    return part


def row_label(r):
    """The table label of a row: the model, with its precision and
    compilation when not fp32 eager."""
    label = r["mixer"]
    if r.get("precision", "fp32") != "fp32":
        label += f" {r['precision']}"
    if r.get("compile"):
        label += " compiled"
    return label


def add_ratios(rows):
    """Adds to each row, at the same mode, precision and duration: time and
    memory ratios to each of ``BASELINES`` (``time/mem_ratio_<baseline>``,
    NaN when not measured), its throughput and its mixers' over the floor's
    (``throughput_ratio_floor``, ``mixer_throughput_ratio_floor``), and its
    time over the same model's in fp32 (``time_ratio_fp32``)."""
    nan = float("nan")
    index = {
        (r["mode"], r.get("precision", "fp32"), bool(r.get("compile")), r["mixer"], r["seconds"]): r
        for r in rows
    }

    def ratio(r, ref, key):
        if ref is None or not ref.get(key) or math.isnan(ref[key]) or math.isnan(r[key]):
            return nan
        return r[key] / ref[key]

    for r in rows:
        prec, comp = r.get("precision", "fp32"), bool(r.get("compile"))
        for base in BASELINES:
            ref = index.get((r["mode"], prec, comp, base, r["seconds"]))
            r[f"time_ratio_{base}"] = ratio(r, ref, TIME_KEY)
            r[f"mem_ratio_{base}"] = ratio(r, ref, "mem_peak_mb" if r["mode"] != "paper" else "mem_with_weights_mb")
        floor = index.get((r["mode"], prec, comp, FLOOR, r["seconds"]))
        r["throughput_ratio_floor"] = ratio(r, floor, "gflops_per_s")
        mixer_rate = r.get("mixer_gflops_per_s", nan)
        r["mixer_throughput_ratio_floor"] = (
            mixer_rate / floor["gflops_per_s"]
            if floor is not None and floor.get("gflops_per_s") and not math.isnan(mixer_rate)
            else nan
        )
        fp32 = index.get((r["mode"], "fp32", False, r["mixer"], r["seconds"]))
        r["time_ratio_fp32"] = ratio(r, fp32, TIME_KEY)
    return rows


def growth(rows, mode, label, key=TIME_KEY):
    """Growth of ``key`` from 1/4 of the longest duration to the longest
    (else from the shortest), for the rows of ``mode`` labelled ``label``:
    returns (factor, short, long).

    Example
    -------
    >>> rows = [{"mode": "forward", "mixer": "m", "seconds": s, "time_min_s": t}
    ...         for s, t in ((20.0, 1.0), (40.0, 2.5), (80.0, 4.2))]
    >>> growth(rows, "forward", "m")
    (4.2, 20.0, 80.0)
    """
    pts = {r["seconds"]: r[key] for r in rows if r["mode"] == mode and row_label(r) == label}
    if len(pts) < 2:
        return float("nan"), None, None
    longest = max(pts)
    short = longest / 4 if longest / 4 in pts else min(pts)
    if not pts[short] or math.isnan(pts[short]):
        return float("nan"), short, longest
    return pts[longest] / pts[short], short, longest
