#!/usr/bin/env python3
"""Speed and memory of each token mixer on 10 to 80 s of speech.

Reproduces the efficiency protocol of Whetten et al. (SLT 2024): a batch of
``--batch`` (6) utterances of the same duration (10, 20, 40, 60, 80 s), fed to
the *full pretraining model* -- conv front-end, Conformer encoder, linear
prediction head onto the 8192 BEST-RQ codes -- at the widths of the shared
encoder YAMLs (``hparams/encoder_<mixer>.yaml``).

What is measured, per (mode, mixer, duration) point:

* the input is random fbank features, (B, T = seconds * 100, 80): computing
  the fbanks themselves is *not* timed (it is the same for every mixer);
* ``forward``: ``model.eval()`` (no dropout) under ``torch.inference_mode``;
  ``train``: ``model.train()`` (dropout on, as in pretraining), forward, a
  cross-entropy on every frame against random codes, backward (no optimiser
  step; gradients are freed between runs);
* on CUDA the forward runs under fp16 autocast (``--no-amp`` for fp32); on
  CPU in fp32;
* ``--warmup`` untimed runs, then ``--repeats`` timed runs: mean and standard
  deviation of the wall-clock time (``time.perf_counter``, after
  ``torch.cuda.synchronize`` on CUDA); tables, ratios and growth use the
  median of the timed runs (robust to one run slowed by another process),
  shown with their standard deviation;
* peak memory of one run over what the model already holds, reset for every
  run, the largest over the timed runs:

  - CUDA: ``torch.cuda.max_memory_allocated()`` after
    ``torch.cuda.reset_peak_memory_stats()``, minus
    ``torch.cuda.memory_allocated()`` before the run (model, input);
  - CPU: the process' peak resident set size
    (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus the resident set
    size after building the model and the input, before the first run. Every
    point runs in a *fresh subprocess* (nothing of another point is resident
    or cached), and the kernel's high-water mark is reset to the current RSS
    before each run (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0; if it
    cannot be written, the peak is the one over all runs of the point).

Results: a table on stdout (time and memory, each also as a ratio to ``mhsa``
measured in the same run, and the growth from 1/4 of the longest duration to
the longest, e.g. time(80 s) / time(20 s): 4x is linear, 16x quadratic), and
``<out>/<mode>.csv``, ``<out>/<mode>.md``, ``<out>/<mode>.png`` (if
matplotlib is installed). ``--profile`` also writes, for every point, the
``torch.profiler`` operator table and the time per Conformer module.

Model sizes (``--size``): ``paper`` is the YAMLs (12 layers, FFN 2048, the
paper's widths); ``small`` (for CPU, minutes) is 4 layers, FFN 512 and every
width -- ``d_model`` and the mixers' own hidden sizes -- divided by 4 (rounded
to a multiple of the heads), keeping the ratios between mixers; ``tiny`` (for
tests) is 2 layers, FFN 128, widths / 16. The head always predicts
``--vocab`` (8192) codes.

Threads: ``torch.set_num_threads(--threads)``, all the cores by default
(``os.cpu_count()``). CPU points run with ``THP_MEM_ALLOC_ENABLE=1``
(PyTorch's switch for transparent huge pages on CPU tensors) unless the
variable is set: without it, page faults on the large activations of long
inputs make every model slower than its arithmetic, more so as T grows.

Example
-------
    python benchmarks/efficiency.py --size small --batch 6 \\
        --lengths 10,20,40,60,80 --mode forward --out benchmarks/results/cpu_small
    python benchmarks/efficiency.py --device cuda --size paper --mode both \\
        --out benchmarks/results/gpu_paper

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import csv
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIXERS = "mhsa,mhsa_sdpa,hypermixing,fastformer,summarymixing,mamba"
LINEAR_MIXERS = (
    "hypermixing",
    "fastformer",
    "summarymixing",
    "summarymixing_lite",
    "mamba",
)
BASELINES = ("mhsa", "mhsa_sdpa")
# The time that tables, ratios, growth and the check use: the median of the
# timed runs (on a shared machine, one run slowed by another process moves a
# mean of 3-5 runs by 10-20%; the median ignores it). The CSV has the mean,
# standard deviation and every run too.
TIME_KEY = "time_median_s"
FRAMES_PER_SECOND = 100  # 10 ms fbank hop
N_MELS = 80

# Width divisor, number of layers (None: the YAML's), FFN size (None: YAML's).
SIZES = {
    "paper": {"scale": 1, "num_layers": None, "d_ffn": None},
    "small": {"scale": 4, "num_layers": 4, "d_ffn": 512},
    "tiny": {"scale": 16, "num_layers": 2, "d_ffn": 128},
}
# Mixer arguments that are widths, divided by the size's scale like d_model.
WIDTH_KWARGS = (
    "hypernet_size",
    "local_proj_hid_dim",
    "local_proj_out_dim",
    "summary_hid_dim",
    "summary_out_dim",
)
# Where a mixer without its own definition takes its sizes from.
YAML_OF = {"summarymixing_lite": "summarymixing"}

CSV_FIELDS = [
    "mode",
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
    "time_median_s",
    "time_mean_s",
    "time_std_s",
    "mem_peak_mb",
    "mem_total_mb",
    "time_ratio_mhsa",
    "mem_ratio_mhsa",
    "time_ratio_mhsa_sdpa",
    "mem_ratio_mhsa_sdpa",
    "mem_method",
    "status",
]


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class PretrainingModel(torch.nn.Module):
    """The BEST-RQ pretraining network: encoder, then a linear head.

    Arguments
    ---------
    encoder : torch.nn.Module
        A ``lobes.encoder.ConformerEncoder`` (conv front-end included).
    d_model : int
        Output size of the encoder.
    vocab : int
        Number of codes the head predicts.

    Example
    -------
    >>> from lobes.encoder import ConformerEncoder
    >>> enc = ConformerEncoder("fastformer", num_layers=1, d_model=16,
    ...                        nhead=2, d_ffn=32, kernel_size=3)
    >>> PretrainingModel(enc, 16, 10)(torch.rand(2, 40, 80)).shape
    torch.Size([2, 10, 10])
    """

    def __init__(self, encoder, d_model, vocab=8192):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(d_model, vocab)

    def forward(self, feats, lengths=None):
        """(B, T, 80) fbank frames -> (B, ceil(T/4), vocab) logits."""
        return self.head(self.encoder(feats, lengths))


def _scale_width(value, scale, multiple=1):
    """Divides a width (or a list of widths) by ``scale``, rounded to a
    multiple of ``multiple`` (at least ``multiple``)."""
    if isinstance(value, (list, tuple)):
        return [_scale_width(v, scale, multiple) for v in value]
    if value is None or scale == 1:
        return value
    return max(multiple, int(round(value / scale / multiple)) * multiple)


def model_config(mixer, size="paper"):
    """The encoder arguments of ``mixer`` at ``size``.

    The paper's sizes are the encoder definitions
    (``lobes.encoder.encoder_config(mixer, "base")``); the smaller ones divide
    every width (d_model, mixer widths, front-end channels) by the size's
    scale and change depth and FFN size. A mixer without a definition of its
    own takes that of ``YAML_OF[mixer]``.

    Arguments
    ---------
    mixer : str
        Token mixer name.
    size : str
        A key of ``SIZES``.

    Returns
    -------
    dict
        ``ConformerEncoder`` arguments.

    Example
    -------
    >>> cfg = model_config("fastformer", "small")
    >>> cfg["d_model"], cfg["num_layers"], cfg["d_ffn"], cfg["frontend_channels"]
    (152, 4, 512, [32, 8])
    """
    from lobes.encoder import encoder_config

    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {sorted(SIZES)}")
    config = encoder_config(YAML_OF.get(mixer, mixer), "base")
    if mixer in YAML_OF:
        config["mixer"] = mixer
        config["mixer_kwargs"] = {
            k: v for k, v in config["mixer_kwargs"].items() if not k.startswith("local_proj")
        }
    spec = SIZES[size]
    scale = spec["scale"]
    if scale == 1 and spec["num_layers"] is None:
        return config
    config["d_model"] = _scale_width(config["d_model"], scale, config["nhead"])
    config["num_layers"] = spec["num_layers"] or config["num_layers"]
    config["d_ffn"] = spec["d_ffn"] or config["d_ffn"]
    config["frontend_channels"] = [max(1, round(c / scale)) for c in config["frontend_channels"]]
    kwargs = dict(config["mixer_kwargs"])
    for key in WIDTH_KWARGS:
        if kwargs.get(key) is not None:
            # HyperMixing splits its hidden size over the heads.
            multiple = config["nhead"] if key == "hypernet_size" else 1
            kwargs[key] = _scale_width(kwargs[key], scale, multiple)
    config["mixer_kwargs"] = kwargs
    return config


def build_model(mixer, size="paper", vocab=8192, device="cpu"):
    """Builds the full pretraining model of ``mixer`` at ``size``.

    Arguments
    ---------
    mixer : str
        Token mixer name.
    size : str
        ``paper``, ``small`` or ``tiny`` (see ``SIZES``).
    vocab : int
        Codes predicted by the head.
    device : str
        Where to put the model.

    Returns
    -------
    model : PretrainingModel
    info : dict
        ``frontend`` (channels of the conv blocks), ``num_layers``,
        ``d_model``, ``d_ffn``, ``nhead``, ``mixer_kwargs``, ``params_m`` (millions of parameters, head included).

    Example
    -------
    >>> model, info = build_model("summarymixing", "tiny", vocab=16)
    >>> info["d_model"], info["num_layers"], info["mixer_kwargs"]["summary_hid_dim"]
    (34, 2, [64])
    >>> info["frontend"]
    '8/2'
    """
    from lobes.encoder import ConformerEncoder

    config = model_config(mixer, size)
    encoder = ConformerEncoder.from_config(config)
    model = PretrainingModel(encoder, config["d_model"], vocab).to(device)
    info = {
        "frontend": "/".join(map(str, config["frontend_channels"])),
        "num_layers": config["num_layers"],
        "d_model": config["d_model"],
        "d_ffn": config["d_ffn"],
        "nhead": config["nhead"],
        "mixer_kwargs": dict(config["mixer_kwargs"]),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    return model, info


# --------------------------------------------------------------------------
# Memory probes
# --------------------------------------------------------------------------


def current_rss_mb():
    """Resident set size of this process now, in MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """High-water mark of this process' resident set size, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def reset_peak_rss():
    """Resets the RSS high-water mark to the current RSS; False if the
    kernel does not allow it (then ``peak_rss_mb`` keeps the old peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# One point
# --------------------------------------------------------------------------


class _ModuleTimer:
    """Forward hooks that open a ``record_function`` span per module, so
    that the profiler gives the time of each part of the Conformer."""

    def __init__(self, model):
        self.handles = []
        enc = model.encoder
        self._label(enc.frontend, "frontend")
        for layer in enc.layers:
            self._label(layer.ffn1, "ffn")
            self._label(layer.mixer, "mixer")
            self._label(layer.conv, "conv_module")
            self._label(layer.ffn2, "ffn")
        self._label(model.head, "head")

    def _label(self, module, name):
        def pre(mod, args):
            mod._bench_span = torch.profiler.record_function(f"## {name}")
            mod._bench_span.__enter__()

        def post(mod, args, out):
            mod._bench_span.__exit__(None, None, None)

        self.handles.append(module.register_forward_pre_hook(pre))
        self.handles.append(module.register_forward_hook(post))

    def remove(self):
        """Removes the hooks."""
        for h in self.handles:
            h.remove()


def _profile(step, model, path, mode):
    """Profiles one ``step()`` and writes the operator and module tables."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    timer = _ModuleTimer(model)
    try:
        with profile(activities=activities, record_shapes=True) as prof:
            step()
    finally:
        timer.remove()
    events = prof.key_averages()
    sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    modules = sorted(
        (e for e in events if e.key.startswith("## ")),
        key=lambda e: -e.cpu_time_total,
    )
    total = sum(e.cpu_time_total for e in modules) or 1.0
    lines = [f"# {path.stem} ({mode})", "", "## Time per module (CPU, inclusive)"]
    lines += [
        f"{e.key[3:]:14s} {e.cpu_time_total / 1e3:10.1f} ms  "
        f"{100 * e.cpu_time_total / total:5.1f} %  ({e.count} calls)"
        for e in modules
    ]
    lines += ["", "## Operators", events.table(sort_by=sort, row_limit=30)]
    lines += [
        "",
        "## Operators by input shape",
        prof.key_averages(group_by_input_shape=True).table(
            sort_by=sort, row_limit=25
        ),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def measure_point(
    mixer,
    seconds,
    mode="forward",
    batch=6,
    size="paper",
    device="cpu",
    repeats=3,
    warmup=1,
    amp=True,
    vocab=8192,
    threads=None,
    profile_dir=None,
    seed=0,
):
    """Times one (mode, mixer, duration) point in this process.

    Arguments
    ---------
    mixer : str
        Token mixer name.
    seconds : float
        Duration of every utterance of the batch.
    mode : str
        ``forward`` (inference) or ``train`` (forward + backward).
    batch : int
        Utterances per batch.
    size : str
        Model size, a key of ``SIZES``.
    device : str
        ``cpu`` or ``cuda``.
    repeats : int
        Timed runs.
    warmup : int
        Untimed runs first.
    amp : bool
        fp16 autocast (CUDA only).
    vocab : int
        Codes predicted by the head.
    threads : int, optional
        ``torch.set_num_threads`` (default: all cores).
    profile_dir : str, optional
        If given, one more (untimed) run is profiled and written there.
    seed : int
        Seed of the weights and of the random input.

    Returns
    -------
    dict
        ``time_median_s``, ``time_mean_s``, ``time_std_s``, ``times_s``, ``mem_peak_mb`` (peak
        over what the model and input hold), ``mem_total_mb`` (absolute
        peak: allocated on CUDA, process RSS on CPU), ``mem_method``, the
        model's sizes and ``status`` (``ok`` or ``OOM``).
    """
    if mode not in ("forward", "train"):
        raise ValueError(f"mode {mode!r}: use 'forward' or 'train'")
    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(seed)
    cuda = device.startswith("cuda")
    model, info = build_model(mixer, size, vocab, device)
    frames = int(round(seconds * FRAMES_PER_SECOND))
    feats = torch.randn(batch, frames, N_MELS, device=device)
    out_frames = model.encoder.output_lengths(torch.tensor(frames)).item()
    targets = torch.randint(vocab, (batch * out_frames,), device=device)
    use_amp = amp and cuda
    autocast = torch.autocast(
        "cuda" if cuda else "cpu", dtype=torch.float16, enabled=use_amp
    )

    if mode == "forward":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(feats)

    else:
        model.train()

        def step():
            with autocast:
                logits = model(feats)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, vocab).float(), targets
                )
            loss.backward()
            model.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        mem_method = "cuda max_memory_allocated - memory_allocated before run"
    else:
        baseline = current_rss_mb()
        can_reset = reset_peak_rss()
        mem_method = "ru_maxrss - RSS after build" + (
            " (HWM reset per run)" if can_reset else " (peak over all runs)"
        )

    times, mems, totals = [], [], []
    status = "ok"
    try:
        for i in range(warmup + repeats):
            if cuda:
                sync()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            elif can_reset:
                reset_peak_rss()
            start = time.perf_counter()
            step()
            sync()
            elapsed = time.perf_counter() - start
            if i < warmup:
                continue
            times.append(elapsed)
            if cuda:
                peak = torch.cuda.max_memory_allocated() / 2**20
                mems.append(peak - base / 2**20)
                totals.append(peak)
            else:
                peak = peak_rss_mb()
                mems.append(peak - baseline)
                totals.append(peak)
        if profile_dir:
            name = f"{mode}_{mixer}_{seconds:g}s.txt"
            _profile(step, model, Path(profile_dir) / name, mode)
    except torch.OutOfMemoryError:
        status = "OOM"
    except RuntimeError as err:  # CPU allocation failures
        if "memory" not in str(err).lower():
            raise
        status = "OOM"

    ok = status == "ok" and times
    return {
        "mixer": mixer,
        "seconds": seconds,
        "frames": frames,
        "mode": mode,
        "batch": batch,
        "size": size,
        **{k: info[k] for k in ("frontend", "num_layers", "d_model", "d_ffn")},
        "params_m": round(info["params_m"], 3),
        "repeats": repeats,
        "warmup": warmup,
        "time_median_s": statistics.median(times) if ok else float("nan"),
        "time_mean_s": statistics.mean(times) if ok else float("nan"),
        "time_std_s": (statistics.stdev(times) if len(times) > 1 else 0.0) if ok else float("nan"),
        "times_s": times,
        "mem_peak_mb": max(mems) if mems and status == "ok" else float("nan"),
        "mem_total_mb": max(totals) if totals and status == "ok" else float("nan"),
        "mem_method": mem_method,
        "status": status,
    }


RESULT_TAG = "BENCH_RESULT "


def run_subprocess_point(point, timeout=3600):
    """Runs ``measure_point(**point)`` in a fresh Python process.

    Arguments
    ---------
    point : dict
        Keyword arguments of ``measure_point`` (JSON-serialisable).
    timeout : float
        Seconds before the point is given up.

    Returns
    -------
    dict
        ``measure_point``'s result; on a crash or a timeout, NaN times and
        memories with the reason in ``status``.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(point)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Transparent huge pages for PyTorch's CPU tensors (its documented
    # THP_MEM_ALLOC_ENABLE switch), for every mixer alike: with 4 KiB pages
    # the page faults of the large activations at 60-80 s dominate and make
    # every model's time grow faster than its arithmetic (export
    # THP_MEM_ALLOC_ENABLE=0 to measure without).
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return _failed(point, f"timeout ({timeout:g} s)")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    status = "killed (out of memory?)" if proc.returncode in (-9, 137) else "error"
    warnings.warn(
        f"{point['mixer']} {point['seconds']} s failed ({proc.returncode}): "
        + " | ".join(tail)
    )
    return _failed(point, f"{status}: rc {proc.returncode}")


def _failed(point, status):
    """A result row for a point that gave no measurement."""
    nan = float("nan")
    return {
        **{k: point.get(k) for k in ("mixer", "seconds", "mode", "batch", "size")},
        "frames": int(round(point["seconds"] * FRAMES_PER_SECOND)),
        "repeats": point.get("repeats"),
        "warmup": point.get("warmup"),
        "time_median_s": nan,
        "time_mean_s": nan,
        "time_std_s": nan,
        "times_s": [],
        "mem_peak_mb": nan,
        "mem_total_mb": nan,
        "mem_method": "",
        "status": status,
    }


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def device_description(device, threads):
    """CPU model / GPU name, thread count and library versions."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name = f"{name}, {os.cpu_count()} logical cores"
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "1 (subprocess points)")
    return (
        f"{name}; torch {torch.__version__}; {threads} threads "
        f"(torch.set_num_threads); THP_MEM_ALLOC_ENABLE={thp}"
    )


def add_ratios(rows):
    """Adds ``time/mem_ratio_<baseline>``: each value over the baseline's at
    the same mode and duration (NaN when the baseline was not measured)."""
    index = {(r["mode"], r["mixer"], r["seconds"]): r for r in rows}
    for r in rows:
        for base in BASELINES:
            ref = index.get((r["mode"], base, r["seconds"]))
            for what in ("time", "mem"):
                key = TIME_KEY if what == "time" else "mem_peak_mb"
                val = float("nan")
                if ref is not None and ref[key] and not math.isnan(ref[key]):
                    val = r[key] / ref[key]
                r[f"{what}_ratio_{base}"] = val
    return rows


def growth(rows, mode, mixer, key):
    """Growth of ``key`` from 1/4 of the longest duration to the longest
    (else from the shortest): returns (factor, short, long)."""
    pts = {r["seconds"]: r[key] for r in rows if r["mode"] == mode and r["mixer"] == mixer}
    if len(pts) < 2:
        return float("nan"), None, None
    longest = max(pts)
    short = longest / 4 if longest / 4 in pts else min(pts)
    if not pts[short] or math.isnan(pts[short]):
        return float("nan"), short, longest
    return pts[longest] / pts[short], short, longest


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _fmt_mem(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"


def format_tables(rows, mode, header, markdown=False):
    """The time and memory tables of ``mode`` as text (or markdown)."""
    rows = [r for r in rows if r["mode"] == mode]
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    lengths = sorted({r["seconds"] for r in rows})
    index = {(r["mixer"], r["seconds"]): r for r in rows}
    longest = max(lengths)
    _, short, _ = growth(rows, mode, mixers[0], TIME_KEY)
    gname = f"{longest:g}s/{short:g}s" if short is not None else "growth"
    out = []

    def table(title, cell, key):
        cols = ["mixer", "d_model", "params"] + [f"{s:g} s" for s in lengths] + [gname]
        body = []
        for m in mixers:
            first = index[(m, lengths[0])]
            line = [m, str(first.get("d_model", "")), f"{first.get('params_m') or float('nan'):.1f}M"]
            for s in lengths:
                r = index.get((m, s))
                line.append(cell(r) if r else "")
            g, _, _ = growth(rows, mode, m, key)
            line.append("—" if math.isnan(g) else f"{g:.2f}x")
            body.append(line)
        if markdown:
            out.append(f"**{title}**\n")
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "|".join("---" for _ in cols) + "|")
            out.extend("| " + " | ".join(line) + " |" for line in body)
        else:
            out.append(title)
            widths = [max(len(x) for x in col) for col in zip(cols, *body)]
            for line in [cols] + body:
                out.append("  ".join(x.ljust(w) for x, w in zip(line, widths)))
        out.append("")

    def time_cell(r):
        if r["status"] != "ok":
            return r["status"].split(":")[0]
        return (
            f"{_fmt(r[TIME_KEY])} ± {_fmt(r['time_std_s'])} "
            f"({_fmt(r['time_ratio_mhsa'], 2)})"
        )

    def mem_cell(r):
        if r["status"] != "ok":
            return r["status"].split(":")[0]
        return f"{_fmt_mem(r['mem_peak_mb'])} ({_fmt(r['mem_ratio_mhsa'], 2)})"

    out.append(header)
    out.append("")
    out.append(
        "Cells: value (ratio to mhsa in the same run; < 1 is cheaper). "
        f"Last column: growth {gname} (4x linear, 16x quadratic)."
    )
    out.append("")
    table("Time per batch, seconds, median ± std of the timed runs", time_cell, TIME_KEY)
    table("Peak memory over the model, MB", mem_cell, "mem_peak_mb")
    out.extend(check_linear(rows, mode, markdown))
    return "\n".join(out)


def check_linear(rows, mode, markdown=False):
    """Lines stating, at the longest duration, whether each linear mixer is
    faster and lighter than mhsa and grows about linearly (<= 4.5x over a 4x
    longer input) while mhsa grows faster."""
    rows = [r for r in rows if r["mode"] == mode]
    longest = max(r["seconds"] for r in rows)
    index = {(r["mixer"], r["seconds"]): r for r in rows}
    ref = index.get(("mhsa", longest))
    if ref is None or ref["status"] != "ok":
        return []
    g_ref, short, _ = growth(rows, mode, "mhsa", TIME_KEY)
    bullet = "- " if markdown else "  "
    out = [f"Check at {longest:g} s (linear mixers vs mhsa, same run):"]
    if short is not None:
        out.append(f"{bullet}mhsa: time {longest:g}s/{short:g}s = {_fmt(g_ref, 2)}x")
    for m in dict.fromkeys(r["mixer"] for r in rows):
        r = index.get((m, longest))
        if m not in LINEAR_MIXERS or r is None:
            continue
        faster = r[TIME_KEY] < ref[TIME_KEY]
        lighter = r["mem_peak_mb"] < ref["mem_peak_mb"]
        line = (
            f"{bullet}{m}: time x{_fmt(r['time_ratio_mhsa'], 2)} "
            f"({'faster' if faster else 'SLOWER'}), memory "
            f"x{_fmt(r['mem_ratio_mhsa'], 2)} "
            f"({'lighter' if lighter else 'HEAVIER'})"
        )
        ok = faster and lighter
        if short is not None:
            g, _, _ = growth(rows, mode, m, TIME_KEY)
            linear = g <= 4.5 and g < g_ref  # False when not measured (NaN)
            ok = ok and linear
            line += (
                f", time {longest:g}s/{short:g}s {_fmt(g, 2)}x "
                f"({'about linear' if linear else 'NOT linear'})"
            )
        out.append(f"{line}: {'PASS' if ok else 'FAIL'}")
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
    """Time and memory vs duration, one line per mixer (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plot written")
        return False
    rows = [r for r in rows if r["mode"] == mode and r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in dict.fromkeys(r["mixer"] for r in rows):
        pts = sorted((r["seconds"], r) for r in rows if r["mixer"] == m)
        xs = [s for s, _ in pts]
        style = "--" if m in BASELINES else "-"
        axes[0].errorbar(
            xs,
            [r[TIME_KEY] for _, r in pts],
            yerr=[r["time_std_s"] for _, r in pts],
            fmt=style + "o",
            ms=4,
            capsize=2,
            label=m,
        )
        axes[1].plot(xs, [r["mem_peak_mb"] for _, r in pts], style + "o", ms=4, label=m)
    axes[0].set_ylabel("time per batch (s)")
    axes[1].set_ylabel("peak memory over the model (MB)")
    for ax in axes:
        ax.set_xlabel("utterance duration (s)")
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv=None):
    """The command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--mode", choices=("forward", "train", "both"), default="forward",
                   help="inference forward, forward+backward, or both")
    p.add_argument("--mixers", default=DEFAULT_MIXERS,
                   help="comma-separated token mixers (mhsa is the ratios' reference)")
    p.add_argument("--lengths", default="10,20,40,60,80",
                   help="comma-separated utterance durations, seconds")
    p.add_argument("--batch", type=int, default=6, help="utterances per batch")
    p.add_argument("--size", choices=sorted(SIZES), default="paper",
                   help="paper: YAML widths; small: 4 layers, widths/4, FFN 512; "
                        "tiny: 2 layers, widths/16, FFN 128")
    p.add_argument("--vocab", type=int, default=8192, help="codes of the head")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: all cores)")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="fp32 on CUDA instead of fp16 autocast")
    p.add_argument("--inprocess", action="store_true",
                   help="measure every point in this process (faster start, "
                        "but CPU memory then also sees earlier points' leftovers)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds per point before giving it up")
    p.add_argument("--profile", action="store_true",
                   help="also write a torch.profiler report per point in <out>/profile")
    p.add_argument("--logy", action="store_true", help="log-scale y in the plot")
    p.add_argument("--out", default="benchmarks/results/latest",
                   help="folder of <mode>.csv, <mode>.md, <mode>.png")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    """Runs the benchmark; returns the result rows (dicts)."""
    args = parse_args(argv)
    if args.worker:
        result = measure_point(**json.loads(args.worker))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return [result]

    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    lengths = [float(s) for s in args.lengths.split(",") if s.strip()]
    modes = ["forward", "train"] if args.mode == "both" else [args.mode]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    from lobes.mixers import check_mixer_name

    for m in mixers:
        check_mixer_name(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_info = device_description(args.device, args.threads)
    size = SIZES[args.size]
    amp = args.amp and args.device.startswith("cuda")
    print(f"Device: {device_info}", flush=True)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    all_rows = []
    for mode in modes:
        rows = []
        for seconds in lengths:
            for mixer in mixers:
                point = dict(
                    mixer=mixer, seconds=seconds, mode=mode, batch=args.batch,
                    size=args.size, device=args.device, repeats=args.repeats,
                    warmup=args.warmup, amp=args.amp, vocab=args.vocab,
                    threads=args.threads,
                    profile_dir=str(out / "profile") if args.profile else None,
                )
                if args.inprocess:
                    r = measure_point(**point)
                    gc.collect()
                else:
                    r = run_subprocess_point(point, args.timeout)
                r["device"] = args.device
                rows.append(r)
                print(
                    f"[{mode}] {mixer:18s} {seconds:5g} s: "
                    f"{_fmt(r[TIME_KEY])} ± {_fmt(r['time_std_s'])} s, "
                    f"{_fmt_mem(r['mem_peak_mb'])} MB  ({r['status']})",
                    flush=True,
                )
        add_ratios(rows)
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        layers = size["num_layers"] or "YAML (12)"
        ffn = size["d_ffn"] or "YAML (2048)"
        header = (
            f"## {mode} | {args.device} | batch {args.batch} | size {args.size} "
            f"(layers {layers}, FFN {ffn}, widths / {size['scale']}, head "
            f"{args.vocab} codes) | {'fp16 autocast' if amp else 'fp32'} | "
            f"{args.warmup} warm-up + {args.repeats} timed runs\n\n"
            f"Device: {device_info}. Input: random fbank features "
            f"(B, seconds x 100, 80); fbank extraction not timed. "
            f"1-min load average {load_start:.1f} at start, {load_end:.1f} at "
            f"end (> 0 means other processes shared the machine). "
            f"{datetime.date.today().isoformat()}."
        )
        text = format_tables(rows, mode, header)
        print("\n" + text, flush=True)
        write_csv(rows, out / f"{mode}.csv")
        (out / f"{mode}.md").write_text(format_tables(rows, mode, header, markdown=True))
        title = (
            f"{mode}, {args.device}, batch {args.batch}, size {args.size} "
            f"-- {device_info}"
        )
        if plot(rows, mode, out / f"{mode}.png", title, args.logy):
            print(f"Wrote {out / mode}.csv, .md, .png", flush=True)
        else:
            print(f"Wrote {out / mode}.csv, .md", flush=True)
        all_rows.extend(rows)
    return all_rows


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    main()
