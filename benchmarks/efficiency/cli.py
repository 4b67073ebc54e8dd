"""The command line: ``python -m benchmarks.efficiency [options]`` (from
the repository root); ``--help`` lists the options.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import datetime
import json
import os
import warnings
from pathlib import Path

import torch

from benchmarks.efficiency.constants import (
    FLOOR,
    MIN_JUDGED_REPEATS,
    PAPER_BATCH,
    PAPER_LENGTHS,
    PAPER_REPEATS,
    PRECISIONS,
    PROTOCOLS,
    SPEECHBRAIN_REF,
    TIME_KEY,
)
from benchmarks.efficiency.device import bf16_supported, device_description
from benchmarks.efficiency.models import SIZES, default_models, split_revision
from benchmarks.efficiency.report import fmt, fmt_mem, format_tables, plot, write_csv
from benchmarks.efficiency.rows import add_ratios, row_label
from benchmarks.efficiency.workers import measure_interleaved, worker_loop

DESCRIPTION = "Speed, memory and throughput of each token mixer on 10 to 80 s of speech."


def parse_args(argv=None):
    """The command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.efficiency",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="default",
                   help="default: this benchmark's; paper: the authors' memory_test_v2.py "
                        "(train mode with autograd, whole pretraining step, batch 6, "
                        "10-80 s every 10 s, memory with weights)")
    p.add_argument("--mode", choices=("forward", "train", "both"), default="forward",
                   help="default protocol: inference forward, forward+backward, or both")
    p.add_argument("--mixers", default=",".join(default_models()),
                   help=f"comma-separated models: token mixers, {FLOOR} "
                        f"(identity mixers) and {SPEECHBRAIN_REF} (SpeechBrain's encoder); "
                        "default: these two and every registered mixer with a definition. "
                        "<mixer>@<commit>: that model with the token mixers' code of a "
                        "commit (a before/after in one run)")
    p.add_argument("--lengths", default=None,
                   help="comma-separated utterance durations, seconds "
                        f"(default 10,20,40,60,80; paper protocol {PAPER_LENGTHS})")
    p.add_argument("--batch", type=int, default=None,
                   help=f"utterances per batch (default 6; paper protocol {PAPER_BATCH})")
    p.add_argument("--size", choices=sorted(SIZES), default="paper",
                   help="paper: YAML widths; small: 4 layers, widths/4, FFN 512; "
                        "tiny: 2 layers, widths/16, FFN 128")
    p.add_argument("--vocab", type=int, default=8192, help="codes of the head")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs per point (default 5; paper protocol {PAPER_REPEATS})")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--interleave", choices=("length", "all"), default="length",
                   help="points alive and run round-robin together: the models of "
                        "one length at a time, or every point at once (more memory)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: all cores)")
    p.add_argument("--precisions", default=None,
                   help="comma-separated fp32, bf16, fp16 (autocast). Default: fp16 on "
                        "CUDA, fp32 on CPU")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="same as --precisions fp32")
    p.add_argument("--compile", action="store_true",
                   help="also measure every model under torch.compile (maybe_compile)")
    p.add_argument("--paper-backward", action="store_true",
                   help="paper protocol: also backpropagate the loss (the authors' "
                        "script does not)")
    p.add_argument("--no-flops", dest="flops", action="store_false",
                   help="do not count each point's work")
    p.add_argument("--inprocess", action="store_true",
                   help="measure every point in this process (faster start, "
                        "but CPU memory then also sees the other points)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds a point may take to build or to run once")
    p.add_argument("--profile", action="store_true",
                   help="also write a torch.profiler report per point in <out>/profile")
    p.add_argument("--logy", action="store_true", help="log-scale y in the plot")
    p.add_argument("--out", default="benchmarks/results/latest",
                   help="folder of <mode>.csv, <mode>.md, <mode>.png")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paper = args.protocol == "paper"
    if args.lengths is None:
        args.lengths = PAPER_LENGTHS if paper else "10,20,40,60,80"
    if args.batch is None:
        args.batch = PAPER_BATCH if paper else 6
    if args.repeats is None:
        args.repeats = PAPER_REPEATS if paper else 5
    if args.precisions is None:
        cuda = args.device.startswith("cuda")
        args.precisions = "fp16" if (cuda and args.amp) else "fp32"
    return args


def point_specs(args, mode, lengths, mixers, precisions):
    """The ``Point`` arguments of every (length, precision, compile, model)
    of one mode, grouped for interleaving (``--interleave``)."""
    groups = []
    for seconds in lengths:
        group = []
        for precision in precisions:
            for compiled in ([False, True] if args.compile else [False]):
                for mixer in mixers:
                    group.append(dict(
                        mixer=mixer, seconds=seconds, protocol=args.protocol, mode=mode,
                        batch=args.batch, size=args.size, device=args.device,
                        precision=precision, vocab=args.vocab, threads=args.threads,
                        compile=compiled, paper_backward=args.paper_backward,
                        repeats=args.repeats, warmup=args.warmup,
                    ))
        groups.append(group)
    if args.interleave == "all":
        groups = [[s for g in groups for s in g]]
    return groups


def _load_average():
    """The 1-minute load average (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _check_args(args, mixers, precisions):
    """Refuses what cannot run (no CUDA, an unknown precision or model);
    warns about emulated bf16 and too few timed runs to judge."""
    from lobes.nnet.mixers import check_mixer_name

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    for p in precisions:
        if p not in PRECISIONS:
            raise SystemExit(f"--precisions: {p!r} is not one of {PRECISIONS}")
    if "bf16" in precisions and not bf16_supported(args.device):
        warnings.warn("bf16 requested but this device has no native bf16: it will be emulated (slow)")
    if args.repeats < MIN_JUDGED_REPEATS:
        warnings.warn(
            f"--repeats {args.repeats}: fewer than {MIN_JUDGED_REPEATS} timed runs per "
            "point (no pass/fail verdict)"
        )
    for m in mixers:
        if m not in (FLOOR, SPEECHBRAIN_REF):
            check_mixer_name(split_revision(m)[0])


def _measure_mode(args, mode, lengths, mixers, precisions, out):
    """Measures every point of ``mode``, group by group, printing a line
    per point; returns the rows with their ratios."""
    rows = []
    for group in point_specs(args, mode, lengths, mixers, precisions):
        results = measure_interleaved(
            group, args.warmup, args.repeats, inprocess=args.inprocess,
            timeout=args.timeout, count_work=args.flops,
            profile_dir=str(out / "profile") if args.profile else None,
        )
        for r in results:
            r["device"] = args.device
            print(
                f"[{mode}] {row_label(r):26s} {r['seconds']:5g} s: "
                f"min {fmt(r[TIME_KEY])} s (median {fmt(r['time_median_s'])}), "
                f"{fmt_mem(r['mem_peak_mb'])} MB over the model, "
                f"{fmt(r.get('gflop'), 1)} GFLOP  ({r['status']})",
                flush=True,
            )
        rows.extend(results)
    return add_ratios(rows)


def _header(args, mode, precisions, device_info, load_start, load_end):
    """The header of the tables of ``mode``: what was run, where, when."""
    size = SIZES[args.size]
    layers = size["num_layers"] or "YAML (12)"
    ffn = size["d_ffn"] or "YAML (2048)"
    what = (
        "paper protocol (authors' memory_test_v2.py: train mode with autograd, "
        "fbank + quantiser + mask + timed front-end/encoder/head + loss"
        + (" + backward" if args.paper_backward else ", no backward")
        + ")"
        if mode == "paper"
        else f"{mode}, random fbank input (fbank extraction not timed)"
    )
    return (
        f"## {what} | {args.device} | batch {args.batch} | size {args.size} "
        f"(layers {layers}, FFN {ffn}, widths / {size['scale']}, head "
        f"{args.vocab} codes) | {', '.join(precisions)} | {args.warmup} warm-up + "
        f"{args.repeats} timed runs per point, interleaved by {args.interleave}\n\n"
        f"Device: {device_info}. 1-min load average {load_start:.1f} at start, "
        f"{load_end:.1f} at end (> 0 means other processes shared the machine). "
        f"{datetime.date.today().isoformat()}."
    )


def _write_mode(rows, mode, args, out, header, device_info):
    """Prints the tables of ``mode`` and writes ``<out>/<mode>.csv``,
    ``.md`` and ``.png`` (the plot if matplotlib is installed)."""
    print("\n" + format_tables(rows, mode, header), flush=True)
    write_csv(rows, out / f"{mode}.csv")
    (out / f"{mode}.md").write_text(format_tables(rows, mode, header, markdown=True))
    title = f"{mode}, {args.device}, batch {args.batch}, size {args.size} -- {device_info}"
    if plot(rows, mode, out / f"{mode}.png", title, args.logy):
        print(f"Wrote {out / mode}.csv, .md, .png", flush=True)
    else:
        print(f"Wrote {out / mode}.csv, .md", flush=True)


def main(argv=None):
    """Runs the benchmark; returns the result rows (dicts)."""
    args = parse_args(argv)
    if args.worker:
        worker_loop(json.loads(args.worker))
        return []

    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    lengths = [float(s) for s in args.lengths.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.protocol == "paper":
        modes = ["paper"]
    else:
        modes = ["forward", "train"] if args.mode == "both" else [args.mode]
    _check_args(args, mixers, precisions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_info = device_description(args.device, args.threads)
    print(f"Device: {device_info}", flush=True)
    load_start = _load_average()

    all_rows = []
    for mode in modes:
        rows = _measure_mode(args, mode, lengths, mixers, precisions, out)
        header = _header(args, mode, precisions, device_info, load_start, _load_average())
        _write_mode(rows, mode, args, out, header, device_info)
        all_rows.extend(rows)
    return all_rows
