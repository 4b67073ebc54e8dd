"""Our encoders side by side with SpeechBrain 1.1.2's own BEST-RQ encoder.

Batch 1, forward without gradients (``eval()``, ``torch.inference_mode``),
2 threads, the paper widths (12 layers, ``hparams/encoder_<mixer>.yaml``),
20 s and 80 s of random 80-dim fbank frames, every point in its own
process, runs interleaved round-robin between the models of a length, time
= minimum over the timed runs (measured by ``benchmarks.efficiency``). Rows:

* ``speechbrain_relposmhaxl``: SpeechBrain's ConvolutionFrontEnd + RelPosMHAXL
  Conformer (``TransformerASR.encode``), d 576, its recipe's arguments;
* ``floor``: our mhsa encoder with every token mixer replaced by the
  identity (what any mixer costs at least);
* every registered mixer with an encoder definition
  (``benchmarks.efficiency.default_models``).

Columns: time at each length, speed at the longest length relative to
SpeechBrain's (its time over ours: > 1 is faster), the same with CPU time
(process time of all threads), growth of the time from the shortest length
to the longest, peak resident set size of the
process relative to SpeechBrain's, matmul GFLOP (``FlopCounterMode``; plus
the Mamba scan's element-wise work, counted analytically), GFLOP/s and that
throughput relative to the floor's, and the token mixers' own part (time
inside them, its share of the forward, their GFLOP/s and its ratio to the
floor's). Then acceptance criteria checked on these numbers (``done_when``:
issues 15 and 23; no verdict from fewer than 5 timed runs).

Example
-------
    python -m benchmarks.vs_speechbrain --out benchmarks/results/vs_speechbrain
    python -m benchmarks.vs_speechbrain --precisions fp32,bf16 --repeats 7

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import datetime
import math
import subprocess
from pathlib import Path

from benchmarks import efficiency as eff
from benchmarks.efficiency.report import failed_reason, fmt, fmt_sig, timed_runs, verdict
from lobes.nnet.mixers import mixer_names

REPO = eff.REPO


def git_commit():
    """The commit of the working tree (with ``+dirty`` if it has changes)."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def comparison_table(rows, precision="fp32", markdown=True):
    """The side-by-side table of ``rows`` (``efficiency`` result rows of one
    precision) as Markdown (or plain text) lines.

    Arguments
    ---------
    rows : list of dict
        Result rows (forward mode), with ``efficiency.add_ratios`` applied.
    precision : str
        Which precision's rows to tabulate.
    markdown : bool
        Markdown table, else aligned text.

    Returns
    -------
    list of str
    """
    rows = [r for r in rows if r.get("precision", "fp32") == precision and not r.get("compile")]
    lengths = sorted({r["seconds"] for r in rows})
    longest = max(lengths)
    index = {(r["mixer"], r["seconds"]): r for r in rows}
    ref = index.get((eff.SPEECHBRAIN_REF, longest))
    names = list(dict.fromkeys(r["mixer"] for r in rows))
    cols = (
        ["encoder"]
        + [f"{s:g} s" for s in lengths]
        + [f"{longest:g} s vs SpeechBrain", f"CPU time vs SpeechBrain at {longest:g} s",
           f"growth {lengths[0]:g}→{longest:g} s",
           f"peak RSS vs SpeechBrain at {longest:g} s",
           f"GFLOP at {longest:g} s", f"GFLOP/s at {longest:g} s", "throughput vs floor",
           f"mixers at {longest:g} s: time (share), GFLOP/s (vs floor)"]
    )
    body = []
    for name in names:
        long_row = index.get((name, longest), {})
        line = [name]
        for s in lengths:
            r = index.get((name, s))
            ok = r is not None and r["status"] == "ok"
            line.append(
                f"{r[eff.TIME_KEY]:.3g} s (med {r['time_median_s']:.3g})" if ok
                else (failed_reason(r) if r else "")
            )
        ok = long_row.get("status") == "ok" and ref is not None and ref["status"] == "ok"
        speed = ref[eff.TIME_KEY] / long_row[eff.TIME_KEY] if ok else float("nan")
        line.append(fmt(speed, 2) + "×")
        cpu = ref["cpu_min_s"] / long_row["cpu_min_s"] if ok and "cpu_min_s" in ref else float("nan")
        line.append(fmt(cpu, 2) + "×")
        short = index.get((name, lengths[0]))
        g = (
            long_row[eff.TIME_KEY] / short[eff.TIME_KEY]
            if ok and short and short["status"] == "ok" else float("nan")
        )
        line.append(fmt(g, 1) + "×")
        rss = long_row.get("mem_total_mb", float("nan")) / ref["mem_total_mb"] if ok else float("nan")
        line.append(
            fmt(rss, 2)
            + (f" ({ref['mem_total_mb'] / 1024:.2f} GB)" if name == eff.SPEECHBRAIN_REF and ok else "")
        )
        line.append(fmt_sig(long_row.get("gflop")))
        line.append(fmt_sig(long_row.get("gflops_per_s")))
        line.append(fmt(long_row.get("throughput_ratio_floor"), 2))
        line.append(_mixer_cell(long_row))
        body.append(line)
    if markdown:
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(cols, *body)]
        out = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [cols] + body]
    return out


def _mixer_cell(r):
    """The mixers' least time, share of the step, GFLOP/s and its ratio to
    the floor's throughput ("—" for the floor and unmeasured rows)."""
    t = r.get("mixer_time_min_s", float("nan"))
    if r.get("mixer") == eff.FLOOR or r.get("status") != "ok" or math.isnan(t):
        return "—"
    return (
        f"{t:.3g} s ({100 * r.get('mixer_share', float('nan')):.0f}%), "
        f"{fmt_sig(r.get('mixer_gflops_per_s'))} ({fmt(r.get('mixer_throughput_ratio_floor'), 2)})"
    )


def done_when(rows, precision="fp32"):
    """The acceptance criteria, checked on ``rows``: lines "- PASS:
    criterion (numbers)" or "- FAIL: ...", or "- not judged: N repeats < 5:
    ..." when a point had fewer than 5 timed runs (``verdict``). Linear
    mixers: ``mixer_names(linear=True)``."""
    rows = [r for r in rows if r.get("precision", "fp32") == precision and not r.get("compile")]
    lengths = sorted({r["seconds"] for r in rows})
    longest, shortest = max(lengths), min(lengths)
    t = {
        (r["mixer"], r["seconds"]): r[eff.TIME_KEY]
        for r in rows if r["status"] == "ok"
    }
    rss = {r["mixer"]: r["mem_total_mb"] for r in rows if r["seconds"] == longest and r["status"] == "ok"}
    thr = {
        r["mixer"]: r.get("throughput_ratio_floor", float("nan"))
        for r in rows if r["seconds"] == longest and r["status"] == "ok"
    }
    sb = eff.SPEECHBRAIN_REF
    linear = mixer_names(linear=True)
    repeats = timed_runs(rows)
    nan = float("nan")
    out = []

    def check(ok, text):
        out.append(f"- {verdict(ok, repeats)}: {text}")

    def get(m, s):
        return t.get((m, s), nan)

    for s in lengths:
        speed = get(sb, s) / get("mhsa", s)
        check(speed >= 1.0, f"mhsa at least as fast as SpeechBrain at {s:g} s ({speed:.2f}×)")
    speed = get(sb, longest) / get("mhsa", longest)
    check(speed >= 1.2, f"mhsa ≥ 1.2× SpeechBrain's speed at {longest:g} s ({speed:.2f}×)")
    ratio = get("mamba", longest) / get("summarymixing", longest)
    check(ratio <= 1.5, f"mamba ≤ 1.5× summarymixing's time at {longest:g} s ({ratio:.2f}×)")
    ratio = get("mamba", shortest) / get("mhsa", shortest)
    check(ratio <= 1.0, f"mamba no slower than mhsa at {shortest:g} s ({ratio:.2f}×)")
    # the paper's linear mixers but mamba (its own criteria above)
    for m in [m for m in mixer_names(paper=True, linear=True) if m != "mamba"]:
        speed = get(sb, longest) / get(m, longest)
        check(speed >= 2.8, f"{m} ≥ 2.8× SpeechBrain's speed at {longest:g} s ({speed:.2f}×)")
    for m in linear:
        if m in rss and sb in rss:
            ratio = rss[m] / rss[sb]
            check(ratio <= 0.45, f"{m} peak memory ≤ 0.45 of SpeechBrain's at {longest:g} s ({ratio:.2f})")
    for m, ratio in thr.items():
        if m not in linear or math.isnan(ratio):
            continue
        check(ratio >= 0.85, f"{m} throughput within 15% of the floor's at {longest:g} s ({ratio:.2f})")
    # issue 23 (the paper's linear mixers)
    for m in mixer_names(paper=True, linear=True):
        speed = get(sb, longest) / get(m, longest)
        check(speed >= 4.5, f"{m} ≥ 4.5× SpeechBrain's speed at {longest:g} s ({speed:.2f}×)")
    ratio = get("mamba", longest) / get("summarymixing", longest)
    check(ratio <= 1.15, f"mamba ≤ 1.15× summarymixing's time at {longest:g} s ({ratio:.2f}×)")
    ratio = get("mamba", shortest) / get("mhsa", shortest)
    check(ratio <= 0.9, f"mamba ≤ 0.9× mhsa's time at {shortest:g} s ({ratio:.2f}×)")
    return out


def parse_args(argv=None):
    """The command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_speechbrain",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(eff.default_models()),
                   help="comma-separated models (default: SpeechBrain's encoder, the floor "
                        "and every registered mixer with a definition)")
    p.add_argument("--lengths", default="20,80", help="durations, seconds")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="paper", choices=sorted(eff.SIZES))
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point (>= 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precisions", default="fp32", help="e.g. fp32,bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/vs_speechbrain")
    return p.parse_args(argv)


def main(argv=None):
    """Measures, prints and writes ``<out>/vs_speechbrain.md`` and ``.csv``."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        "--mode", "forward", "--mixers", args.models, "--lengths", args.lengths,
        "--batch", str(args.batch), "--threads", str(args.threads), "--size", args.size,
        "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--precisions", args.precisions, "--device", args.device, "--out", str(out),
    ]
    commit = git_commit()  # before the run writes its results into the tree
    rows = eff.main(cmd)
    lines = [
        f"# Our encoders vs SpeechBrain {_sb_version()}'s BEST-RQ encoder",
        "",
        f"Commit {commit}, {datetime.date.today().isoformat()}. "
        f"Device: {eff.device_description(args.device, args.threads)}. "
        f"Batch {args.batch}, forward without gradients, size {args.size}, "
        f"each point its own process, {args.warmup} warm-up + {args.repeats} "
        "timed runs interleaved round-robin between the models of a length; "
        "times are minima (median in brackets).",
        "",
    ]
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        lines += [f"## {precision}", ""]
        lines += comparison_table(rows, precision)
        lines += ["", "Criteria:", ""]
        lines += done_when(rows, precision)
        lines.append("")
    text = "\n".join(lines)
    (out / "vs_speechbrain.md").write_text(text)
    print("\n" + text)
    print(f"Wrote {out / 'vs_speechbrain.md'}")
    return rows


def _sb_version():
    try:
        import speechbrain

        return speechbrain.__version__
    except (ImportError, AttributeError):
        return "?"


if __name__ == "__main__":
    main()
