"""Profiling one step: ``torch.profiler`` operator tables and the time of
each part of the Conformer (front-end, FFN, mixer, convolution module, head).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch

from benchmarks.efficiency.models import SpeechBrainBestRQ


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


def profile_step(step, model, path, title):
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
