#!/usr/bin/env python3
"""Speed, memory and throughput of each token mixer on 10 to 80 s of speech.

Every model is the *full pretraining network* -- conv front-end, Conformer
encoder, linear prediction head onto the 8192 BEST-RQ codes -- at the widths
of the shared encoder YAMLs (``hparams/encoder_<mixer>.yaml``), beside two
references measured in the same run:

* ``speechbrain_relposmhaxl``: SpeechBrain 1.1.2's own BEST-RQ network, built
  with the arguments of its recipe
  (``recipes/LibriSpeech/self-supervised-learning/BEST-RQ/hparams/BEST-RQ.yaml``):
  ``ConvolutionFrontEnd`` (2 blocks of 1 layer, channels 128/32, kernels 3,
  strides 2, no residuals), then ``TransformerASR.encode`` (Conformer,
  ``RelPosMHAXL``, d_model 576, 8 heads, 12 layers, FFN 2048, GELU,
  pre-norm, non-causal), then the same linear head;
* ``floor``: our encoder of ``FLOOR_BASE`` (``mhsa``, d_model 576) with the
  token mixer of every layer replaced by the identity (``IdentityMixer``:
  the input, zeroed on padding): what any mixer costs at least.

Protocols (``--protocol``):

* ``default``: a batch of ``--batch`` utterances of random 80-dim fbank
  frames (computing fbanks not timed); ``--mode forward`` (``eval()`` under
  ``torch.inference_mode``) and/or ``train`` (forward, cross-entropy on every
  frame, backward). Peak memory is over what the model and input hold.
* ``paper``: the procedure of the authors' ``memory_test_v2.py`` (Whetten et
  al., SLT 2024): batch 6 of 10, 20, ..., 80 s, the model in ``train()``
  mode with autograd on (the graph is built and kept, no backward), and the
  whole pretraining step per run: fbank extraction of a random waveform,
  sentence normalisation, BEST-RQ quantiser targets, span mask and noise,
  then *timed*: front-end + encoder + head; then the masked cross-entropy
  (``--paper-backward`` adds its backward, which their script does not do).
  fp16 autocast on CUDA; on CPU fp32 unless ``--precisions bf16``. Memory
  is the peak of the whole step *including the weights*: CUDA
  ``max_memory_allocated`` during the step over what was allocated before
  it, plus what the point allocated when built (weights, buffers, input):
  their absolute ``max_memory_allocated`` when the point has its process to
  itself, and still right with ``--inprocess``; CPU the peak resident set
  size over the resident set size before the model was built.

Timing (both protocols): per point ``--warmup`` untimed runs then
``--repeats`` (>= 5) timed runs, *interleaved*: the models of a length (or,
``--interleave all``, every point) are alive at once, each in its own
process, and run one after another round-robin, so a burst of load from other
processes slows one run of every model rather than every run of one. The
tables give the **minimum** (the least disturbed run) with the median and the
interquartile range as the spread; ratios and growth use the minima. The CSV
also has ``cpu_min_s``, the least CPU time (all threads, ``process_time``) of
the timed part: when other processes take the cores it inflates far less
than wall time (it still counts OpenMP threads spinning at barriers).

Throughput: the matrix-product work of one forward counted with
``torch.utils.flop_counter.FlopCounterMode`` (fused CPU attention included),
plus, for the PyTorch Mamba scan, its element-wise work counted analytically
(``SCAN_OPS`` operations per state element and frame), divided by the time;
the ratio to the floor's throughput says how close a model runs to the
arithmetic rate of the parts every model shares.

Precision (``--precisions``): ``fp32``, ``bf16`` (autocast; on CPU where the
processor has bf16 instructions) and ``fp16`` (autocast, CUDA); each model is
reported per precision, bf16 rows with their speed-up over fp32.

``--compile`` runs ``maybe_compile`` (``torch.compile``) on each model and
reports the first-call (compile) time and the largest difference from the
eager outputs on the same input.

Results: tables on stdout, and ``<out>/<mode>.csv``, ``<out>/<mode>.md``,
``<out>/<mode>.png`` (if matplotlib is installed). ``--profile`` also writes,
for every point, the ``torch.profiler`` operator table and the time per
Conformer module.

Model sizes (``--size``): ``paper`` is the YAMLs (12 layers, FFN 2048, the
paper's widths); ``small`` (for CPU, minutes) is 4 layers, FFN 512 and every
width -- ``d_model`` and the mixers' own hidden sizes -- divided by 4 (rounded
to a multiple of the heads), keeping the ratios between mixers; ``tiny`` (for
tests) is 2 layers, FFN 128, widths / 16. The head always predicts
``--vocab`` (8192) codes.

Threads: ``torch.set_num_threads(--threads)``, all the cores by default.
Subprocess points run with ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's switch for
transparent huge pages on CPU tensors) unless the variable is set.

Example
-------
    python benchmarks/efficiency.py --size small --batch 6 \\
        --lengths 10,20,40,60,80 --mode forward --out benchmarks/results/cpu_small
    python benchmarks/efficiency.py --protocol paper --size small \\
        --out benchmarks/results/cpu_paper_protocol
    python benchmarks/efficiency.py --device cuda --protocol paper \\
        --precisions fp16,bf16 --out benchmarks/results/gpu_paper_protocol

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
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SPEECHBRAIN_REF = "speechbrain_relposmhaxl"
FLOOR = "floor"
FLOOR_BASE = "mhsa"  # the encoder whose mixers the floor replaces (d 576)
DEFAULT_MIXERS = (
    f"{SPEECHBRAIN_REF},{FLOOR},mhsa,mhsa_sdpa,hypermixing,fastformer,"
    "summarymixing,mamba"
)
LINEAR_MIXERS = (
    "hypermixing",
    "fastformer",
    "summarymixing",
    "summarymixing_lite",
    "mamba",
)
# Models every other one gets a time and memory ratio to (when measured).
BASELINES = ("mhsa", "mhsa_sdpa", SPEECHBRAIN_REF)
PROTOCOLS = ("default", "paper")
PRECISIONS = ("fp32", "bf16", "fp16")
# Tables, ratios, growth and checks use the fastest timed run: on a shared
# machine other processes only ever add time, so the minimum over interleaved
# runs is the least disturbed estimate. The CSV also has the median, the
# quartiles, the mean, the standard deviation and every run.
TIME_KEY = "time_min_s"
FRAMES_PER_SECOND = 100  # 10 ms fbank hop
SAMPLE_RATE = 16000
N_MELS = 80
# Element-wise operations per state element and frame of the PyTorch Mamba
# scan (delta*A, exp2, delta*u*B, a*h + b: 5); C.h is a matmul, counted by
# FlopCounterMode.
SCAN_OPS = 5
# The authors' memory_test_v2.py: batch 6 of 10, 20, ..., 80 s.
PAPER_BATCH = 6
PAPER_LENGTHS = "10,20,30,40,50,60,70,80"
PAPER_REPEATS = 10  # their EVAL_AVG_STEPS

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
# SpeechBrain's BEST-RQ recipe (hparams/BEST-RQ.yaml of SpeechBrain 1.1.2).
SPEECHBRAIN_BESTRQ = {
    "d_model": 576,
    "nhead": 8,
    "num_layers": 12,
    "d_ffn": 2048,
    "dropout": 0.1,
    "frontend_channels": (128, 32),
    "tgt_vocab": 2048,  # its output_neurons; no decoder, so no parameter
}

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
    "time_ratio_mhsa",
    "mem_ratio_mhsa",
    "time_ratio_mhsa_sdpa",
    "mem_ratio_mhsa_sdpa",
    f"time_ratio_{SPEECHBRAIN_REF}",
    f"mem_ratio_{SPEECHBRAIN_REF}",
    "time_ratio_fp32",
    "compile_s",
    "compile_max_abs_diff",
    "mem_method",
    "status",
]


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class PretrainingModel(torch.nn.Module):
    """The BEST-RQ pretraining network: encoder, then a linear head.

    Arguments
    ---------
    encoder : torch.nn.Module
        A ``lobes.nnet.encoder.ConformerEncoder`` (conv front-end included).
    d_model : int
        Output size of the encoder.
    vocab : int
        Number of codes the head predicts.

    Example
    -------
    >>> from lobes.nnet.encoder import ConformerEncoder
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

    def output_lengths(self, frames):
        """Output frames (LongTensor) for ``frames`` fbank frames."""
        return self.encoder.output_lengths(frames)


class IdentityMixer(torch.nn.Module):
    """A token mixer that mixes nothing: returns its input, zero on padding.

    Put in every layer of an encoder, it gives the *floor*: the cost of
    everything but the token mixers (front-end, FFNs, convolution modules,
    norms, head).

    Example
    -------
    >>> IdentityMixer()(torch.ones(1, 3, 2), torch.tensor([[0, 0, 1]]).bool())[0, :, 0]
    tensor([1., 1., 0.])
    """

    def forward(self, x, pad_mask=None, pos_emb=None):
        """Returns ``x`` (B, T, D) with padded frames zeroed."""
        from lobes.nnet.mixers.common import zero_padded

        return zero_padded(x, pad_mask)


def replace_mixers_with_identity(encoder):
    """Swaps the token mixer of every layer of a ``ConformerEncoder`` for
    ``IdentityMixer`` (in place; positional encodings off, as the identity
    ignores them). Returns the encoder."""
    for layer in encoder.layers:
        layer.mixer = IdentityMixer()
    encoder.positional_encoding = "none"
    return encoder


class SpeechBrainBestRQ(torch.nn.Module):
    """SpeechBrain's own BEST-RQ pretraining network (the reference).

    ``ConvolutionFrontEnd`` and ``TransformerASR`` with the arguments of
    SpeechBrain's recipe (``BEST-RQ.yaml``), run as its ``EncoderWrapper``
    runs it (``TransformerASR.encode``), then a linear head onto the codes.

    Arguments
    ---------
    d_model, nhead, num_layers, d_ffn : int
        Encoder sizes (recipe: 576, 8, 12, 2048).
    dropout : float
        Transformer dropout (recipe: 0.1).
    frontend_channels : tuple of int
        Channels of the two conv blocks (recipe: 128, 32).
    tgt_vocab : int
        ``TransformerASR``'s output vocabulary (unused without a decoder).
    vocab : int
        Codes predicted by the head.
    n_mels : int
        Input features per frame.

    Example
    -------
    >>> m = SpeechBrainBestRQ(32, 4, 1, 64, frontend_channels=(8, 2), vocab=10)
    >>> m(torch.rand(2, 41, 80)).shape, m.output_lengths(torch.tensor(41)).item()
    (torch.Size([2, 11, 10]), 11)
    """

    def __init__(
        self,
        d_model=576,
        nhead=8,
        num_layers=12,
        d_ffn=2048,
        dropout=0.1,
        frontend_channels=(128, 32),
        tgt_vocab=2048,
        vocab=8192,
        n_mels=N_MELS,
    ):
        super().__init__()
        from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
        from speechbrain.lobes.models.transformer.TransformerASR import (
            TransformerASR,
        )

        self.cnn = ConvolutionFrontEnd(
            input_shape=(8, 10, n_mels),
            num_blocks=2,
            num_layers_per_block=1,
            out_channels=tuple(frontend_channels),
            kernel_sizes=(3, 3),
            strides=(2, 2),
            residuals=(False, False),
        )
        freq = math.ceil(math.ceil(n_mels / 2) / 2)
        self.transformer = TransformerASR(
            input_size=frontend_channels[-1] * freq,
            tgt_vocab=tgt_vocab,
            d_model=d_model,
            nhead=nhead,
            num_encoder_layers=num_layers,
            num_decoder_layers=0,
            d_ffn=d_ffn,
            dropout=dropout,
            activation=torch.nn.GELU,
            conformer_activation=torch.nn.GELU,
            encoder_module="conformer",
            attention_type="RelPosMHAXL",
            normalize_before=True,
            causal=False,
        )
        self.head = torch.nn.Linear(d_model, vocab)

    def forward(self, feats, lengths=None):
        """(B, T, 80) fbank frames (and relative lengths) -> (B, ceil(T/4), vocab)."""
        return self.head(self.transformer.encode(self.cnn(feats), lengths))

    @staticmethod
    def output_lengths(frames):
        """Output frames for ``frames`` fbank frames (two stride-2 blocks)."""
        for _ in range(2):
            frames = torch.div(frames + 1, 2, rounding_mode="floor")
        return frames


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

    The only place the benchmark reads model sizes (with ``build_model``).
    The paper's sizes are the encoder definitions
    (``lobes.config.encoder_config(mixer, "base")``); the smaller ones divide
    every width (d_model, mixer widths, front-end channels) by the size's
    scale and change depth and FFN size. A mixer without a definition of its
    own takes that of ``YAML_OF[mixer]``.

    Arguments
    ---------
    mixer : str
        Token mixer name (``hparams/encoder_<mixer>.yaml``, or the definition
        of ``YAML_OF[mixer]`` with ``mixer`` replaced), ``floor`` (that of
        ``FLOOR_BASE``) or ``speechbrain_relposmhaxl``.
    size : str
        A key of ``SIZES``.

    Returns
    -------
    dict
        ``ConformerEncoder`` arguments; for the reference, the
        ``SpeechBrainBestRQ`` arguments.

    Example
    -------
    >>> cfg = model_config("fastformer", "small")
    >>> cfg["d_model"], cfg["num_layers"], cfg["d_ffn"], cfg["frontend_channels"]
    (152, 4, 512, [32, 8])
    >>> model_config("speechbrain_relposmhaxl", "small")["d_model"]
    144
    """
    from lobes.config import encoder_config

    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {sorted(SIZES)}")
    spec = SIZES[size]
    scale = spec["scale"]
    if mixer == SPEECHBRAIN_REF:
        cfg = dict(SPEECHBRAIN_BESTRQ)
        cfg["d_model"] = _scale_width(cfg["d_model"], scale, cfg["nhead"])
        cfg["num_layers"] = spec["num_layers"] or cfg["num_layers"]
        cfg["d_ffn"] = spec["d_ffn"] or cfg["d_ffn"]
        cfg["frontend_channels"] = tuple(
            max(1, round(c / scale)) for c in cfg["frontend_channels"]
        )
        return cfg
    if mixer == FLOOR:
        mixer = FLOOR_BASE
    config = encoder_config(YAML_OF.get(mixer, mixer), "base")
    if mixer in YAML_OF:
        config["mixer"] = mixer
        config["mixer_kwargs"] = {
            k: v for k, v in config["mixer_kwargs"].items() if not k.startswith("local_proj")
        }
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
        Token mixer name, ``floor`` or ``speechbrain_relposmhaxl``.
    size : str
        ``paper``, ``small`` or ``tiny`` (see ``SIZES``).
    vocab : int
        Codes predicted by the head.
    device : str
        Where to put the model.

    Returns
    -------
    model : torch.nn.Module
        ``PretrainingModel`` or ``SpeechBrainBestRQ``: ``model(feats,
        lengths)`` gives logits, ``model.output_lengths(frames)`` their count.
    info : dict
        ``frontend`` (channels of the conv blocks), ``num_layers``,
        ``d_model``, ``d_ffn``, ``nhead``, ``mixer_kwargs``, ``params_m``
        (millions of parameters, head included).

    Example
    -------
    >>> model, info = build_model("summarymixing", "tiny", vocab=16)
    >>> info["d_model"], info["num_layers"], info["mixer_kwargs"]["summary_hid_dim"]
    (34, 2, [64])
    >>> info["frontend"]
    '8/2'
    >>> floor, info = build_model("floor", "tiny", vocab=16)
    >>> type(floor.encoder.layers[0].mixer).__name__, info["d_model"]
    ('IdentityMixer', 32)
    """
    from lobes.nnet.encoder import ConformerEncoder

    config = model_config(mixer, size)
    if mixer == SPEECHBRAIN_REF:
        model = SpeechBrainBestRQ(**config, vocab=vocab).to(device)
        config = {**config, "mixer_kwargs": {}}
    else:
        encoder = ConformerEncoder.from_config(config)
        if mixer == FLOOR:
            replace_mixers_with_identity(encoder)
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


def maybe_compile(model, enabled=True, **kwargs):
    """``torch.compile(model, **kwargs)`` if ``enabled``, else ``model``.

    For the recipes and the benchmark alike: one switch (``compile: True``)
    that leaves the eager model untouched when off. The compiled module
    shares the parameters of ``model`` (its ``state_dict`` keys gain an
    ``_orig_mod.`` prefix: save the original module). Where a compiler is
    missing or fails, the error surfaces at the first call.

    Arguments
    ---------
    model : torch.nn.Module
        The module to compile.
    enabled : bool
        False returns ``model`` itself.
    **kwargs : dict
        Passed to ``torch.compile`` (e.g. ``dynamic=False``, ``mode``).

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> lin = torch.nn.Linear(2, 2)
    >>> maybe_compile(lin, enabled=False) is lin
    True
    """
    if not enabled:
        return model
    return torch.compile(model, **kwargs)


# --------------------------------------------------------------------------
# Work counting
# --------------------------------------------------------------------------


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """Flops of a fused attention: QK^T and the weighted sum of values."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn):
    """Matrix-product flops of ``fn()`` (``FlopCounterMode``).

    ``FlopCounterMode`` counts matmuls, convolutions and the fused attention
    kernels it knows; the CPU flash-attention kernel that
    ``scaled_dot_product_attention`` uses is added here (QK^T + AV, like the
    CUDA kernels). Element-wise work is not counted.

    Example
    -------
    >>> count_flops(lambda: torch.ones(2, 3) @ torch.ones(3, 4))
    48
    """
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        custom[cpu_flash] = _sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return counter.get_total_flops()


def scan_flops(model, batch, frames):
    """Element-wise work of the PyTorch Mamba scans of ``model`` for one
    forward of ``batch`` sequences of ``frames`` encoder frames:
    ``SCAN_OPS`` operations per state element (D_in x N) and frame, for every
    ``MambaBlock`` (0 for models without one).

    Example
    -------
    >>> from lobes.nnet.mixers.mamba import BiMamba
    >>> scan_flops(BiMamba(8, d_state=4), batch=2, frames=10)  # 2 blocks
    12800
    """
    from lobes.nnet.mixers.mamba import MambaBlock

    total = 0
    for module in model.modules():
        if isinstance(module, MambaBlock):
            d_inner = module.D.numel()
            total += SCAN_OPS * batch * frames * d_inner * module.d_state
    return total


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


def bf16_supported(device="cpu"):
    """Whether bf16 autocast runs natively here (CPU: AVX-512 BF16 / AMX)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# --------------------------------------------------------------------------
# One point: a model, an input, a step
# --------------------------------------------------------------------------


class _ModuleTimer:
    """Forward hooks that open a ``record_function`` span per module, so
    that the profiler gives the time of each part of the Conformer."""

    def __init__(self, model):
        self.handles = []
        if isinstance(model, SpeechBrainBestRQ):
            self._label(model.cnn, "frontend")
            for layer in model.transformer.encoder.layers:
                self._label(layer.ffn_module1, "ffn")
                self._label(layer.mha_layer, "mixer")
                self._label(layer.convolution_module, "conv_module")
                self._label(layer.ffn_module2, "ffn")
        else:
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


def _profile(step, model, path, title):
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
    lines = [f"# {title}", "", "## Time per module (CPU, inclusive)"]
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


def _autocast(device, precision):
    """The autocast context of ``precision`` (disabled for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(
        "cuda" if device.startswith("cuda") else "cpu",
        dtype=dtype or torch.float32,
        enabled=dtype is not None,
    )


class Point:
    """One measured point: a model, its input and its step, in this process.

    Arguments
    ---------
    mixer : str
        Token mixer name, ``floor`` or ``speechbrain_relposmhaxl``.
    seconds : float
        Duration of every utterance of the batch.
    protocol : str
        ``default`` or ``paper`` (see the module docstring).
    mode : str
        ``forward`` or ``train`` (``default`` protocol; ``paper`` for the
        paper protocol).
    batch : int
        Utterances per batch.
    size : str
        Model size, a key of ``SIZES``.
    device : str
        ``cpu`` or ``cuda``.
    precision : str
        ``fp32``, ``bf16`` or ``fp16`` (autocast).
    vocab : int
        Codes predicted by the head.
    threads : int, optional
        ``torch.set_num_threads`` (default: all cores).
    compile : bool
        ``torch.compile`` the model (``maybe_compile``).
    paper_backward : bool
        Paper protocol: also run the backward of the loss.
    seed : int
        Seed of the weights and of the random input.
    """

    def __init__(
        self,
        mixer,
        seconds,
        protocol="default",
        mode="forward",
        batch=6,
        size="paper",
        device="cpu",
        precision="fp32",
        vocab=8192,
        threads=None,
        compile=False,
        paper_backward=False,
        seed=0,
        **unused,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        if protocol == "paper":
            mode = "paper"
        elif mode not in ("forward", "train"):
            raise ValueError(f"mode {mode!r}: use 'forward' or 'train'")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        torch.set_num_threads(threads or os.cpu_count())
        torch.manual_seed(seed)
        self.cuda = device.startswith("cuda")
        self.device = device
        self.mode, self.protocol = mode, protocol
        self.mixer, self.seconds, self.batch, self.vocab = mixer, seconds, batch, vocab
        self.precision = precision
        gc.collect()
        self.rss_before_model = None if self.cuda else current_rss_mb()
        cuda_before = torch.cuda.memory_allocated() if self.cuda else 0
        self.model, self.info = build_model(mixer, size, vocab, device)
        self.frames = int(round(seconds * FRAMES_PER_SECOND))
        self.autocast = _autocast(device, precision)
        self.compile_s = float("nan")
        self.compile_diff = float("nan")
        self.last_step_time = float("nan")
        self.last_cpu = float("nan")
        if protocol == "paper":
            self._setup_paper(paper_backward)
        else:
            self._setup_default()
        if compile:
            self._compile()
        # What this point holds on the GPU (weights, buffers, inputs), so that
        # "including the weights" stays right with other points in the process.
        self.own_cuda_mb = (torch.cuda.memory_allocated() - cuda_before) / 2**20 if self.cuda else 0.0
        self._setup_memory()

    # -- steps -------------------------------------------------------------

    def _setup_default(self):
        self.feats = torch.randn(self.batch, self.frames, N_MELS, device=self.device)
        out_frames = int(self.model.output_lengths(torch.tensor(self.frames)))
        self.out_frames = out_frames
        targets = torch.randint(self.vocab, (self.batch * out_frames,), device=self.device)
        if self.mode == "forward":
            self.model.eval()
        else:
            self.model.train()
        self.forward_model = self.model

        def step():
            if self.mode == "forward":
                with torch.inference_mode(), self.autocast:
                    self.forward_model(self.feats)
                return None
            with self.autocast:
                logits = self.forward_model(self.feats)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, self.vocab).float(), targets
                )
            loss.backward()
            self.model.zero_grad(set_to_none=True)
            return None

        self.step = step

    def _setup_paper(self, backward):
        """The authors' memory_test_v2.py step, with this repository's
        BEST-RQ pieces (fbank, quantiser, span mask, masked loss)."""
        from speechbrain.lobes.features import Fbank
        from speechbrain.processing.features import InputNormalization

        from lobes.nnet.bestrq import (
            RandomProjectionQuantizer,
            compute_span_mask,
            masked_prediction_loss,
            pad_to_multiple,
            stack_frames,
        )

        stack = 4
        fbank = Fbank(sample_rate=SAMPLE_RATE, n_fft=400, n_mels=N_MELS).to(self.device)
        normalize = InputNormalization(norm_type="sentence").to(self.device)
        quantizer = RandomProjectionQuantizer(stack * N_MELS, 16, self.vocab).to(self.device)
        wavs = torch.rand(self.batch, int(self.seconds * SAMPLE_RATE), device=self.device)
        wav_lens = torch.ones(self.batch, device=self.device)
        self.model.train()  # as theirs: never put in eval mode
        self.forward_model = self.model
        sync = torch.cuda.synchronize if self.cuda else (lambda: None)

        def step():
            start_step = time.perf_counter()
            with self.autocast:
                feats = fbank(wavs)
                feats = normalize(feats, wav_lens)
                frames = torch.full((self.batch,), feats.shape[1], device=self.device)
                feats = pad_to_multiple(feats, stack)
                B, T, _ = feats.shape
                targets = quantizer(stack_frames(feats, stack))
                mask = compute_span_mask(frames, T, 0.15, 4)
                noise = torch.randn_like(feats) * 0.1
                feats = torch.where(mask.unsqueeze(-1), noise, feats)
                sync()
                start, cpu = time.perf_counter(), time.process_time()
                logits = self.forward_model(feats, frames / T)
                sync()
                elapsed = time.perf_counter() - start
                self.last_cpu = time.process_time() - cpu
                loss_mask = mask.view(B, T // stack, stack).any(dim=-1)
                loss, _ = masked_prediction_loss(logits, targets, loss_mask)
            if backward:
                loss.backward()
                self.model.zero_grad(set_to_none=True)
            sync()
            self.last_step_time = time.perf_counter() - start_step
            return elapsed

        self.step = step
        T = pad_to_multiple(torch.zeros(1, self.frames + 1, 1), stack).shape[1]
        self.feats = torch.randn(self.batch, T, N_MELS, device=self.device)
        self.out_frames = int(self.model.output_lengths(torch.tensor(T)))

    def _compile(self):
        """Compiles the model, times the first (compiling) call and compares
        its outputs with the eager model's on the same input."""
        self.model.eval()
        with torch.no_grad(), self.autocast:
            eager = self.model(self.feats).float()
        compiled = maybe_compile(self.model, dynamic=False)
        start = time.perf_counter()
        with torch.no_grad(), self.autocast:
            out = compiled(self.feats).float()
        self.compile_s = time.perf_counter() - start
        self.compile_diff = (out - eager).abs().max().item()
        self.model.train(self.mode != "forward")
        self.forward_model = compiled

    # -- memory ------------------------------------------------------------

    def _setup_memory(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            self.mem_method = (
                "cuda max_memory_allocated - allocated before run "
                "(with weights: + what this point allocated when built)"
            )
            self.can_reset = True
        else:
            self.baseline = current_rss_mb()
            self.can_reset = reset_peak_rss()
            self.mem_method = (
                "ru_maxrss - RSS after build (with weights: - RSS before build)"
                + (" (HWM reset per run)" if self.can_reset else " (peak over all runs)")
            )

    def run(self):
        """One run of the step: returns (seconds, peak MB over the model,
        absolute peak MB, peak MB including the weights). The step's wall
        time and the timed part's CPU time (all threads) are left in
        ``last_step_time`` and ``last_cpu``."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # other points' cached blocks
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            reset_peak_rss()
        start, cpu = time.perf_counter(), time.process_time()
        timed = self.step()
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start if timed is None else timed
        if self.protocol != "paper":
            self.last_step_time = time.perf_counter() - start
            self.last_cpu = time.process_time() - cpu
        if self.cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
            over = peak - base / 2**20
            return elapsed, over, peak, over + self.own_cuda_mb
        peak = peak_rss_mb()
        return elapsed, peak - self.baseline, peak, peak - self.rss_before_model

    def flops(self):
        """Matrix-product flops of one model forward on this point's input
        (and of the backward in ``train`` mode), plus the analytic scan
        work (x3 with a backward)."""
        train = self.mode == "train"

        def fn():
            if train:
                self.model(self.feats).float().sum().backward()
                self.model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad(), self.autocast:
                    self.model(self.feats)

        matmul = count_flops(fn)
        scan = scan_flops(self.model, self.batch, self.out_frames) * (3 if train else 1)
        return matmul + scan

    def profile(self, path):
        """Writes the profiler tables of one step to ``path``."""
        _profile(self.step, self.model, Path(path), f"{self.mixer} {self.seconds:g} s ({self.mode})")


# --------------------------------------------------------------------------
# Measuring: interleaved runs, each point in its own process
# --------------------------------------------------------------------------


RESULT_TAG = "BENCH_RESULT "


class _InProcess:
    """A ``Point`` driven directly (``--inprocess``, tests)."""

    def __init__(self, spec):
        self.spec = spec
        self.point = Point(**spec)
        self.info = self.point.info

    def call(self, command, arg=None):
        if command == "run":
            return list(self.point.run()) + [self.point.last_step_time, self.point.last_cpu]
        if command == "flops":
            return self.point.flops()
        if command == "profile":
            return self.point.profile(arg)
        if command == "extras":
            return {
                "compile_s": self.point.compile_s,
                "compile_max_abs_diff": self.point.compile_diff,
                "mem_method": self.point.mem_method,
            }
        raise ValueError(command)

    def close(self):
        self.point = None
        gc.collect()


class _Worker:
    """A ``Point`` in its own Python process, driven over a pipe: the
    parent writes a JSON command per line, the worker answers one tagged
    JSON line. Nothing of another point is resident in its memory."""

    def __init__(self, spec, timeout):
        self.spec, self.timeout = spec, timeout
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Transparent huge pages for PyTorch's CPU tensors (its documented
        # THP_MEM_ALLOC_ENABLE switch), for every model alike: with 4 KiB
        # pages the page faults of the large activations at 60-80 s dominate
        # (export THP_MEM_ALLOC_ENABLE=0 to measure without).
        env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH")) if p
        )
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        # A thread reads the worker's stdout into a queue, so that a timeout
        # never depends on how lines were buffered.
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()
        self.info = self._read()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output: the worker exited

    def _read(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"timeout ({self.timeout:g} s)") from None
            if line is None:  # the worker died
                self.proc.wait()
                self.stderr.seek(0)
                tail = " | ".join(self.stderr.read().strip().splitlines()[-3:])
                rc = self.proc.returncode
                kind = "killed (out of memory?)" if rc in (-9, 137) else "error"
                raise RuntimeError(f"{kind}: rc {rc}: {tail}")
            if line.startswith(RESULT_TAG):
                answer = json.loads(line[len(RESULT_TAG):])
                if isinstance(answer, dict) and "error" in answer:
                    raise RuntimeError(answer["error"])
                return answer

    def call(self, command, arg=None):
        self.proc.stdin.write(json.dumps([command, arg]) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps(["quit", None]) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def worker_loop(spec):
    """The worker side of ``_Worker``: builds the point, answers commands."""

    def answer(obj):
        print(RESULT_TAG + json.dumps(obj), flush=True)

    try:
        point = _InProcess(spec)
    except Exception as err:  # reported to the parent as the point's status
        answer({"error": f"{type(err).__name__}: {err}"})
        return
    answer(point.info)
    for line in sys.stdin:
        command, arg = json.loads(line)
        if command == "quit":
            return
        try:
            answer(point.call(command, arg))
        except torch.OutOfMemoryError:
            answer({"error": "OOM"})
        except RuntimeError as err:
            msg = "OOM" if "memory" in str(err).lower() else f"RuntimeError: {err}"
            answer({"error": msg})


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


def _result(spec, info, runs, status, flops=None, extras=None):
    """A result row from the runs of one point."""
    nan = float("nan")
    ok = status == "ok" and bool(runs)
    times = [r[0] for r in runs] if ok else []
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
    return row


def measure_interleaved(specs, warmup=1, repeats=5, inprocess=False, timeout=3600,
                        count_work=True, profile_dir=None, log=print):
    """Measures the points ``specs`` round-robin: all are built (each in its
    own process unless ``inprocess``), then for each of ``warmup + repeats``
    rounds every point runs once, in a rotating order; the first ``warmup``
    rounds are not kept. Then the work of each point is counted
    (``Point.flops``) and, with ``profile_dir``, one more step profiled.

    Arguments
    ---------
    specs : list of dict
        Keyword arguments of ``Point``.
    warmup, repeats : int
        Untimed and timed rounds.
    inprocess : bool
        Drive the points in this process (faster, for tests; CPU memory then
        also sees the other points).
    timeout : float
        Seconds a worker may take to build or to answer one command.
    count_work : bool
        Count each point's flops.
    profile_dir : str, optional
        Where to write one profile per point.
    log : callable
        Progress lines.

    Returns
    -------
    list of dict
        One result row per spec, in order (failed points: NaN and a status).
    """
    points, status, runs, info = [], [], [[] for _ in specs], [None] * len(specs)
    for i, spec in enumerate(specs):
        try:
            p = _InProcess(spec) if inprocess else _Worker(spec, timeout)
            info[i] = p.info
            points.append(p)
            status.append("ok")
        except (RuntimeError, TimeoutError, torch.OutOfMemoryError) as err:
            points.append(None)
            status.append(_status_of(err))
    try:
        for r in range(warmup + repeats):
            order = list(range(len(specs)))
            order = order[r % len(order):] + order[: r % len(order)] if order else order
            for i in order:
                if points[i] is None or status[i] != "ok":
                    continue
                try:
                    res = points[i].call("run")
                except (RuntimeError, TimeoutError, torch.OutOfMemoryError) as err:
                    status[i] = _status_of(err)
                    continue
                if r >= warmup:
                    runs[i].append(res)
        rows = []
        for i, spec in enumerate(specs):
            flops, extras = None, None
            if points[i] is not None and status[i] == "ok":
                try:
                    extras = points[i].call("extras")
                    if count_work:
                        flops = points[i].call("flops")
                    if profile_dir:
                        name = (
                            f"{spec.get('protocol', 'default')}_{spec.get('mode', 'forward')}_"
                            f"{spec.get('precision', 'fp32')}_{spec['mixer']}_{spec['seconds']:g}s.txt"
                        )
                        points[i].call("profile", str(Path(profile_dir) / name))
                except (RuntimeError, TimeoutError, torch.OutOfMemoryError) as err:
                    log(f"  {spec['mixer']}: counting/profiling failed ({err})")
            row = _result(spec, info[i], runs[i], status[i], flops, extras)
            rows.append(row)
    finally:
        for p in points:
            if p is not None:
                p.close()
    return rows


def _status_of(err):
    """The status string of a failed point."""
    text = str(err)
    if isinstance(err, torch.OutOfMemoryError) or text.startswith("OOM"):
        return "OOM"
    if isinstance(err, TimeoutError):
        return text
    warnings.warn(f"point failed: {text}")
    return text.split(":")[0] if text.startswith("killed") else "error: " + text[:80]


def measure_point(repeats=3, warmup=1, profile_dir=None, **spec):
    """Measures one point in this process (``warmup`` then ``repeats``
    runs); returns its result row. See ``Point`` for the arguments."""
    spec = {**spec, "repeats": repeats, "warmup": warmup}
    return measure_interleaved([spec], warmup, repeats, inprocess=True,
                               profile_dir=profile_dir)[0]


def run_subprocess_point(point, timeout=3600):
    """Measures one point (``Point`` arguments plus ``repeats`` and
    ``warmup``) in a fresh Python process; returns its result row."""
    return measure_interleaved(
        [point], point.get("warmup", 1), point.get("repeats", 5), timeout=timeout
    )[0]


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def device_description(device, threads):
    """CPU model / GPU name, thread count, bf16 support and versions."""
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
        cap = torch.backends.cpu.get_cpu_capability()
        name = (
            f"{name}, {os.cpu_count()} logical cores, ATen {cap}, native bf16 "
            f"{'yes' if bf16_supported('cpu') else 'no'}"
        )
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "1 (subprocess points)")
    return (
        f"{name}; torch {torch.__version__}; {threads} threads "
        f"(torch.set_num_threads); THP_MEM_ALLOC_ENABLE={thp}"
    )


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
    NaN when not measured), its throughput over the floor's
    (``throughput_ratio_floor``), and its time over the same model's in
    fp32 (``time_ratio_fp32``)."""
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


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _fmt_sig(x, digits=3):
    """``x`` with ``digits`` significant digits ("—" for NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}"


def _fmt_mem(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"


def format_tables(rows, mode, header, markdown=False):
    """The time, memory and throughput tables of ``mode`` as text (or
    markdown): one line per model (and precision), one column per duration,
    then the growth."""
    rows = [r for r in rows if r["mode"] == mode]
    labels = list(dict.fromkeys(row_label(r) for r in rows))
    lengths = sorted({r["seconds"] for r in rows})
    index = {(row_label(r), r["seconds"]): r for r in rows}
    _, short, longest = growth(rows, mode, labels[0])
    gname = f"{longest:g}s/{short:g}s" if short is not None else "growth"
    ref = next((b for b in (SPEECHBRAIN_REF, "mhsa") if any(r["mixer"] == b for r in rows)), None)
    ref_short = {SPEECHBRAIN_REF: "SB", "mhsa": "mhsa", None: ""}[ref]
    mem_key = "mem_with_weights_mb" if mode == "paper" else "mem_peak_mb"
    out = []

    def table(title, cell, key):
        cols = ["model", "d_model", "params"] + [f"{s:g} s" for s in lengths] + [gname]
        body = []
        for label in labels:
            first = next(index[(label, s)] for s in lengths if (label, s) in index)
            params = first.get("params_m")
            line = [label, str(first.get("d_model", "")), f"{params if params is not None else float('nan'):.1f}M"]
            for s in lengths:
                r = index.get((label, s))
                line.append(cell(r) if r else "")
            g = growth(rows, mode, label, key)[0]
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

    def failed(r):
        return r["status"].split(":")[0] if r["status"] != "ok" else None

    def ratios(r, what):
        parts = []
        if ref:
            parts.append(f"{_fmt(r.get(f'{what}_ratio_{ref}'), 2)} {ref_short}")
        if ref != "mhsa" and any(x["mixer"] == "mhsa" for x in rows):
            parts.append(f"{_fmt(r.get(f'{what}_ratio_mhsa'), 2)} mhsa")
        return ", ".join(parts)

    def time_cell(r):
        if failed(r):
            return failed(r)
        cell = (
            f"{_fmt(r[TIME_KEY])} (med {_fmt(r.get('time_median_s'))}, IQR "
            f"{_fmt(r.get('time_q1_s'))}-{_fmt(r.get('time_q3_s'))}) [{ratios(r, 'time')}]"
        )
        if r.get("precision", "fp32") != "fp32" or r.get("compile"):
            cell += f" {_fmt(r.get('time_ratio_fp32'), 2)}x fp32-eager"
        return cell

    def mem_cell(r):
        if failed(r):
            return failed(r)
        return f"{_fmt_mem(r[mem_key])} [{ratios(r, 'mem')}]"

    def work_cell(r):
        if failed(r):
            return failed(r)
        return (
            f"{_fmt_sig(r.get('gflop'))} GFLOP, {_fmt_sig(r.get('gflops_per_s'))} GFLOP/s "
            f"({_fmt(r.get('throughput_ratio_floor'), 2)} floor)"
        )

    out.append(header)
    out.append("")
    out.append(
        f"Cells: value [ratio to {'SpeechBrain (SB) and ' if ref == SPEECHBRAIN_REF else ''}"
        "mhsa at the same length, same run; < 1 is cheaper]. "
        f"Last column: growth {gname} of the minima (4x linear, 16x quadratic)."
    )
    out.append("")
    table(
        "Time per batch, seconds: min over the interleaved timed runs "
        "(median, interquartile range)",
        time_cell,
        TIME_KEY,
    )
    mem_title = (
        "Peak memory of the step including the weights, MB"
        if mode == "paper"
        else "Peak memory over the model, MB"
    )
    table(mem_title, mem_cell, mem_key)
    if any(not math.isnan(r.get("gflop", float("nan"))) for r in rows):
        table(
            "Work and throughput: matmul GFLOP (+ Mamba scan, analytic) / min time "
            "(ratio to the floor's throughput)",
            work_cell,
            "gflop",
        )
    compiled = [r for r in rows if r.get("compile")]
    if compiled:
        out.append("torch.compile: first call (compile) time, largest |compiled - eager| output:")
        for r in compiled:
            out.append(
                f"{'- ' if markdown else '  '}{row_label(r)} {r['seconds']:g} s: "
                f"{_fmt(r['compile_s'], 1)} s, {r['compile_max_abs_diff']:.2e}"
            )
        out.append("")
    out.extend(check_linear(rows, mode, markdown))
    return "\n".join(out)


def check_linear(rows, mode, markdown=False):
    """Lines stating, at the longest duration, whether each linear mixer is
    faster and lighter than mhsa and grows about linearly (<= 4.5x over a 4x
    longer input) while mhsa grows faster (fp32, eager rows)."""
    rows = [
        r for r in rows
        if r["mode"] == mode and r.get("precision", "fp32") == "fp32" and not r.get("compile")
    ]
    if not rows:
        return []
    longest = max(r["seconds"] for r in rows)
    index = {(r["mixer"], r["seconds"]): r for r in rows}
    ref = index.get(("mhsa", longest))
    if ref is None or ref["status"] != "ok":
        return []
    mem_key = "mem_with_weights_mb" if mode == "paper" else "mem_peak_mb"
    g_ref, short, _ = growth(rows, mode, "mhsa", TIME_KEY)
    bullet = "- " if markdown else "  "
    out = [f"Check at {longest:g} s (linear mixers vs mhsa, same run):"]
    if short is not None:
        out.append(f"{bullet}mhsa: time {longest:g}s/{short:g}s = {_fmt(g_ref, 2)}x")
    for m in dict.fromkeys(r["mixer"] for r in rows):
        r = index.get((m, longest))
        if m not in LINEAR_MIXERS or r is None or r["status"] != "ok":
            continue
        faster = r[TIME_KEY] < ref[TIME_KEY]
        lighter = r[mem_key] < ref[mem_key]
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


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv=None):
    """The command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="default",
                   help="default: this benchmark's; paper: the authors' memory_test_v2.py "
                        "(train mode with autograd, whole pretraining step, batch 6, "
                        "10-80 s every 10 s, memory with weights)")
    p.add_argument("--mode", choices=("forward", "train", "both"), default="forward",
                   help="default protocol: inference forward, forward+backward, or both")
    p.add_argument("--mixers", default=DEFAULT_MIXERS,
                   help=f"comma-separated models: token mixers, {FLOOR} "
                        f"(identity mixers) and {SPEECHBRAIN_REF} (SpeechBrain's encoder)")
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
                   help="same as --precisions fp32 (kept for old command lines)")
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
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    for p in precisions:
        if p not in PRECISIONS:
            raise SystemExit(f"--precisions: {p!r} is not one of {PRECISIONS}")
    if "bf16" in precisions and not bf16_supported(args.device):
        warnings.warn("bf16 requested but this device has no native bf16: it will be emulated (slow)")
    if args.repeats < 5:
        warnings.warn(f"--repeats {args.repeats}: fewer than 5 timed runs per point")
    from lobes.nnet.mixers import check_mixer_name

    for m in mixers:
        if m not in (FLOOR, SPEECHBRAIN_REF):
            check_mixer_name(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_info = device_description(args.device, args.threads)
    size = SIZES[args.size]
    print(f"Device: {device_info}", flush=True)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    all_rows = []
    for mode in modes:
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
                    f"min {_fmt(r[TIME_KEY])} s (median {_fmt(r['time_median_s'])}), "
                    f"{_fmt_mem(r['mem_peak_mb'])} MB over the model, "
                    f"{_fmt(r.get('gflop'), 1)} GFLOP  ({r['status']})",
                    flush=True,
                )
            rows.extend(results)
        add_ratios(rows)
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
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
        header = (
            f"## {what} | {args.device} | batch {args.batch} | size {args.size} "
            f"(layers {layers}, FFN {ffn}, widths / {size['scale']}, head "
            f"{args.vocab} codes) | {', '.join(precisions)} | {args.warmup} warm-up + "
            f"{args.repeats} timed runs per point, interleaved by {args.interleave}\n\n"
            f"Device: {device_info}. 1-min load average {load_start:.1f} at start, "
            f"{load_end:.1f} at end (> 0 means other processes shared the machine). "
            f"{datetime.date.today().isoformat()}."
        )
        text = format_tables(rows, mode, header)
        print("\n" + text, flush=True)
        write_csv(rows, out / f"{mode}.csv")
        (out / f"{mode}.md").write_text(format_tables(rows, mode, header, markdown=True))
        title = f"{mode}, {args.device}, batch {args.batch}, size {args.size} -- {device_info}"
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
