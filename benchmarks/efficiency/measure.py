"""One measured point: a model, its input and its step, in this process.

Two steps (``protocol``):

* ``default``: random (B, T, 80) fbank frames; ``forward`` (``eval()``
  under ``torch.inference_mode``) or ``train`` (forward, cross-entropy on
  every frame, backward); memory is the peak over what the model and input
  hold.
* ``paper``: the step of the authors' ``memory_test_v2.py`` (Whetten et
  al., SLT 2024): the model in ``train()`` mode with autograd on, fbank of a
  random waveform, sentence normalisation, BEST-RQ quantiser targets, span
  mask and noise, then the *timed* front-end + encoder + head, then the
  masked cross-entropy (and its backward with ``paper_backward``); memory is
  the peak of the whole step including the weights (CUDA:
  ``max_memory_allocated`` during the step over what was allocated before
  it, plus what the point allocated when built; CPU: peak RSS over the RSS
  before the model was built).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import gc
import os
import time
from pathlib import Path

import torch

from benchmarks.efficiency.constants import (
    FRAMES_PER_SECOND,
    N_MELS,
    PRECISIONS,
    PROTOCOLS,
    SAMPLE_RATE,
)
from benchmarks.efficiency.flops import count_flops, scan_flops
from benchmarks.efficiency.memory import current_rss_mb, peak_rss_mb, reset_peak_rss
from benchmarks.efficiency.mixer_work import MixerTimer, mixer_flops
from benchmarks.efficiency.models import build_model, maybe_compile
from benchmarks.efficiency.profiling import profile_step


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
        ``default`` or ``paper`` (see this module's docstring).
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
        # The time spent inside the token mixers during the timed part
        # (forward; and backward in the training step), by hooks: not under
        # torch.compile, whose graphs the hooks would break.
        self.mixer_timer = None
        if not compile:
            self.mixer_timer = MixerTimer(
                self.model, backward=self.mode == "train", cuda=self.cuda
            )
        self.last_mixer_time = float("nan")
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
                if self.mixer_timer is not None:
                    self.mixer_timer.reset()
                start, cpu = time.perf_counter(), time.process_time()
                logits = self.forward_model(feats, frames / T)
                sync()
                elapsed = time.perf_counter() - start
                self.last_cpu = time.process_time() - cpu
                if self.mixer_timer is not None:
                    self.last_mixer_time = self.mixer_timer.seconds()
                    self.mixer_timer.reset()  # the timed part only
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
        time, the timed part's CPU time (all threads) and the time spent
        inside the token mixers during the timed part are left in
        ``last_step_time``, ``last_cpu`` and ``last_mixer_time``."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # other points' cached blocks
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            reset_peak_rss()
        if self.mixer_timer is not None and self.protocol != "paper":
            self.mixer_timer.reset()
        start, cpu = time.perf_counter(), time.process_time()
        timed = self.step()
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start if timed is None else timed
        if self.protocol != "paper":
            self.last_step_time = time.perf_counter() - start
            self.last_cpu = time.process_time() - cpu
            if self.mixer_timer is not None:
                self.last_mixer_time = self.mixer_timer.seconds()
        if self.cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
            over = peak - base / 2**20
            return elapsed, over, peak, over + self.own_cuda_mb
        peak = peak_rss_mb()
        return elapsed, peak - self.baseline, peak, peak - self.rss_before_model

    def flops(self):
        """Work of one step's timed part: ``[total, mixers]``, the
        matrix-product flops of one model forward on this point's input
        (and of the backward in ``train`` mode) plus the analytic scan work
        (x3 with a backward), and the part of it done inside the token
        mixers (``mixer_work.mixer_flops``; the scans are the mixers')."""
        train = self.mode == "train"

        def fn():
            if train:
                self.model(self.feats).float().sum().backward()
                self.model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad(), self.autocast:
                    self.model(self.feats)

        counts = {}
        matmul = count_flops(fn, per_module=counts)
        scan = scan_flops(self.model, self.batch, self.out_frames) * (3 if train else 1)
        return [matmul + scan, mixer_flops(counts, self.model) + scan]

    def profile(self, path):
        """Writes the profiler tables of one step to ``path``."""
        profile_step(self.step, self.model, Path(path), f"{self.mixer} {self.seconds:g} s ({self.mode})")
