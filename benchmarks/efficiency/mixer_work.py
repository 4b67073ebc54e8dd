"""The token mixers' own share of a step: the time spent inside them
(forward, and backward in a training step) and their matrix-product work,
so that their throughput can be set beside the floor's.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import re
import time

import torch

from benchmarks.efficiency.models import SpeechBrainBestRQ


def mixer_modules(model):
    """``(name, module)`` of the token mixer of every layer of ``model``
    (a ``PretrainingModel``, or SpeechBrain's attention for its encoder).

    Example
    -------
    >>> from benchmarks.efficiency.models import build_model
    >>> model, _ = build_model("fastformer", "tiny", vocab=16)
    >>> [name for name, _ in mixer_modules(model)]
    ['encoder.layers.0.mixer', 'encoder.layers.1.mixer']
    """
    if isinstance(model, SpeechBrainBestRQ):
        pattern = r"transformer\.encoder\.layers\.\d+\.mha_layer"
    else:
        pattern = r"encoder\.layers\.\d+\.mixer"
    return [(n, m) for n, m in model.named_modules() if re.fullmatch(pattern, n)]


class MixerTimer:
    """Hooks that add up the time spent inside the token mixers of a model.

    Forward hooks time each mixer call; with ``backward``, full backward
    hooks time the backward of each (from the gradient of its output to that
    of its input: the autograd engine runs a layer's nodes one after the
    other, in the reverse order of their creation). On CUDA the times are
    read from events, without synchronising inside the step.

    Arguments
    ---------
    model : torch.nn.Module
        The measured model (``mixer_modules``).
    backward : bool
        Also time the mixers' backward.
    cuda : bool
        Time with CUDA events.

    Example
    -------
    >>> from benchmarks.efficiency.models import build_model
    >>> model, _ = build_model("summarymixing", "tiny", vocab=16)
    >>> timer = MixerTimer(model, backward=True)
    >>> timer.reset(); model(torch.randn(1, 40, 80)).sum().backward()
    >>> 0 < timer.seconds()
    True
    >>> timer.remove()
    """

    def __init__(self, model, backward=False, cuda=False):
        self.cuda = cuda
        self.handles = []
        self.spans = []
        for _, module in mixer_modules(model):
            self.handles.append(module.register_forward_pre_hook(self._start))
            self.handles.append(module.register_forward_hook(self._stop))
            if backward:
                self.handles.append(module.register_full_backward_pre_hook(self._start_bwd))
                self.handles.append(module.register_full_backward_hook(self._stop_bwd))
        self._open = {}

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _begin(self, key):
        self._open[key] = self._now()

    def _end(self, key):
        start = self._open.pop(key, None)
        if start is not None:
            self.spans.append((start, self._now()))

    def _start(self, module, args):
        self._begin(("fwd", id(module)))

    def _stop(self, module, args, out):
        self._end(("fwd", id(module)))

    def _start_bwd(self, module, grad_out):
        self._begin(("bwd", id(module)))

    def _stop_bwd(self, module, grad_in, grad_out):
        self._end(("bwd", id(module)))

    def reset(self):
        """Forgets the spans measured so far."""
        self.spans, self._open = [], {}

    def seconds(self):
        """Seconds spent in the mixers since ``reset`` (CUDA: after a
        synchronisation)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans) / 1e3
        return sum(b - a for a, b in self.spans)

    def remove(self):
        """Removes the hooks."""
        for h in self.handles:
            h.remove()
        self.handles = []


def mixer_flops(counts, model):
    """The flops a ``FlopCounterMode``'s per-module ``counts``
    (``get_flop_counts()``) attribute to the token mixers of ``model``
    (forward, and backward when it ran).

    Example
    -------
    >>> from torch.utils.flop_counter import FlopCounterMode
    >>> from benchmarks.efficiency.models import build_model
    >>> model, _ = build_model("fastformer", "tiny", vocab=16)
    >>> with FlopCounterMode(display=False) as counter:
    ...     _ = model(torch.randn(1, 40, 80))
    >>> 0 < mixer_flops(counter.get_flop_counts(), model) < counter.get_total_flops()
    True
    """
    root = type(model).__name__
    total = 0
    for name, _ in mixer_modules(model):
        total += sum(counts.get(f"{root}.{name}", {}).values())
    return total
