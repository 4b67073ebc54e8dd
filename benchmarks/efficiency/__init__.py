"""Speed, memory and throughput of each token mixer on 10 to 80 s of speech.

Every model is the full pretraining network -- conv front-end, Conformer
encoder, linear head onto the BEST-RQ codes -- at the widths of the encoder
definitions (``hparams/encoder_<mixer>.yaml``) or smaller (``--size``),
beside two references measured in the same run: ``speechbrain_relposmhaxl``
(SpeechBrain's own BEST-RQ network, the arguments of its recipe) and
``floor`` (our ``mhsa`` encoder with every token mixer replaced by the
identity). By default it measures these two and every mixer of the
registry (``lobes.nnet.mixers.MIXERS``) that has a definition.

Each point (model, length, precision) runs ``--warmup`` untimed then
``--repeats`` timed steps, interleaved round-robin with the other points of
its group, each in its own process unless ``--inprocess``; the tables give
the minimum time (median, interquartile range), peak memory, matmul work and
throughput, with ratios to the references. Results: tables on stdout and
``<out>/<mode>.csv``, ``.md``, ``.png``. Protocols, measurements and their
reading: ``benchmarks/README.md``.

Modules: ``models`` (the networks and their sizes), ``flops`` (work),
``mixer_work`` (the token mixers' own time and work), ``memory`` (RSS
probes), ``device``, ``profiling``, ``measure`` (``Point``: one model,
input and step), ``workers`` (interleaved runs, worker processes), ``rows``
(result rows, ratios, CSV columns), ``report`` (tables, checks, CSV, plot),
``cli`` (the command line).

Example
-------
    python -m benchmarks.efficiency --size small --batch 6 \\
        --lengths 10,20,40,60,80 --mode forward --out benchmarks/results/cpu_small
    python -m benchmarks.efficiency --protocol paper --size small \\
        --out benchmarks/results/cpu_paper_protocol
    python -m benchmarks.efficiency --device cuda --protocol paper \\
        --precisions fp16,bf16 --out benchmarks/results/gpu_paper_protocol

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

from benchmarks.efficiency.cli import main, parse_args, point_specs
from benchmarks.efficiency.constants import (
    BASELINES,
    FLOOR,
    FLOOR_BASE,
    MHSA,
    MIN_JUDGED_REPEATS,
    PAPER_BATCH,
    PAPER_LENGTHS,
    PAPER_REPEATS,
    PRECISIONS,
    PROTOCOLS,
    REPO,
    SPEECHBRAIN_REF,
    TIME_KEY,
)
from benchmarks.efficiency.device import bf16_supported, device_description
from benchmarks.efficiency.flops import SCAN_OPS, count_flops, scan_flops
from benchmarks.efficiency.measure import Point
from benchmarks.efficiency.memory import current_rss_mb, peak_rss_mb, reset_peak_rss
from benchmarks.efficiency.mixer_work import MixerTimer, mixer_flops, mixer_modules
from benchmarks.efficiency.models import (
    SIZES,
    IdentityMixer,
    PretrainingModel,
    SpeechBrainBestRQ,
    build_model,
    default_models,
    has_definition,
    maybe_compile,
    model_config,
    replace_mixers_with_identity,
    split_revision,
    swap_mixers,
)
from benchmarks.efficiency.report import (
    check_linear,
    check_mamba_step,
    failed_reason,
    fmt,
    fmt_mem,
    fmt_sig,
    format_tables,
    plot,
    verdict,
    write_csv,
)
from benchmarks.efficiency.rows import (
    CSV_FIELDS,
    add_ratios,
    growth,
    result_row,
    row_label,
    summarize_times,
)
from benchmarks.efficiency.workers import (
    measure_interleaved,
    measure_point,
    run_subprocess_point,
    worker_loop,
)

__all__ = [
    "main",
    "parse_args",
    "point_specs",
    "BASELINES",
    "FLOOR",
    "FLOOR_BASE",
    "MHSA",
    "MIN_JUDGED_REPEATS",
    "PAPER_BATCH",
    "PAPER_LENGTHS",
    "PAPER_REPEATS",
    "PRECISIONS",
    "PROTOCOLS",
    "REPO",
    "SPEECHBRAIN_REF",
    "TIME_KEY",
    "bf16_supported",
    "device_description",
    "SCAN_OPS",
    "count_flops",
    "scan_flops",
    "Point",
    "current_rss_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "MixerTimer",
    "mixer_flops",
    "mixer_modules",
    "SIZES",
    "IdentityMixer",
    "PretrainingModel",
    "SpeechBrainBestRQ",
    "build_model",
    "default_models",
    "has_definition",
    "maybe_compile",
    "model_config",
    "replace_mixers_with_identity",
    "split_revision",
    "swap_mixers",
    "check_linear",
    "check_mamba_step",
    "failed_reason",
    "fmt",
    "fmt_mem",
    "fmt_sig",
    "format_tables",
    "plot",
    "verdict",
    "write_csv",
    "CSV_FIELDS",
    "add_ratios",
    "growth",
    "result_row",
    "row_label",
    "summarize_times",
    "measure_interleaved",
    "measure_point",
    "run_subprocess_point",
    "worker_loop",
]
