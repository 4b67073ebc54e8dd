"""Curves of a BEST-RQ pretraining run: loss, accuracy, code usage.

Reads the run folder's step log (``train_steps_log.txt``: one line every
``log_interval`` optimizer steps, written by ``lobes.brains.pretraining``) and its
epoch log (``train_log.txt``: the validation loss and accuracy) and draws,
against optimizer steps:

* the training loss (last batch) and the validation loss, beside ln(V), the
  loss of a uniform guess over the V codes;
* the masked-prediction accuracy beside its chance level (the share of the
  most frequent code: what predicting one code everywhere scores);
* the codes the targets use, their perplexity and the predictions'
  perplexity (log scale; a collapsed quantiser or head drops here);
* the gradient norm before clipping and the learning rate.

A healthy run has its accuracy climbing well above the chance line while the
code perplexity stays in the hundreds or thousands. The pretraining recipe
writes the figure at the end of a run (``train_curves`` in its YAML); for any
run folder, even one still training::

    python -m lobes.utils.plot_run results/bestrq_summarymixing/1000 [--out curves.png]

Needs matplotlib (installed with this package).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import math
import re
from pathlib import Path

STEPS_LOG = "train_steps_log.txt"
EPOCH_LOG = "train_log.txt"
PNG = "train_curves.png"


def parse_log_line(line):
    """One line of a SpeechBrain ``FileTrainLogger`` as ``{key: value}``
    (numbers as floats; the ``train``/``valid`` prefixes kept in the keys).

    Example
    -------
    >>> parse_log_line("epoch: 1, steps: 28, lr: 1.40e-03 - train loss: 8.65 - valid loss: 8.09")
    {'epoch': 1.0, 'steps': 28.0, 'lr': 0.0014, 'train loss': 8.65, 'valid loss': 8.09}
    """
    out = {}
    for part in re.split(r", | - ", line.strip()):
        key, sep, value = part.partition(": ")
        if not sep:
            continue
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def read_run(folder):
    """The step-log rows and the epoch-log rows of a run folder (lists of
    dicts; the epoch log may be missing or empty)."""
    folder = Path(folder)
    steps_log = folder / STEPS_LOG
    if not steps_log.is_file():
        raise FileNotFoundError(
            f"No {STEPS_LOG} in {folder}: give the output folder of a "
            "BEST-RQ pretraining run (it writes the log every log_interval steps)."
        )
    steps = [parse_log_line(line) for line in steps_log.read_text().splitlines() if line.strip()]
    epochs = []
    if (folder / EPOCH_LOG).is_file():
        epochs = [
            row for row in map(parse_log_line, (folder / EPOCH_LOG).read_text().splitlines())
            if "steps" in row
        ]
    return steps, epochs


def _series(rows, key, x="step"):
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), float) and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot(ax, rows, key, *fmt, x="step", **kwargs):
    """Plots ``key`` of ``rows`` against ``x`` if any row has it (logs of
    older runs lack the health signals)."""
    xs, ys = _series(rows, key, x)
    if xs:
        ax.plot(xs, ys, *fmt, **kwargs)


def plot_run(folder, out=None, cb_vocab=8192, missing_ok=False):
    """Draws the curves of the run in ``folder``; returns the PNG's path.

    Arguments
    ---------
    folder : str or Path
        A pretraining output folder (with ``train_steps_log.txt``).
    out : str or Path, optional
        The PNG to write (default ``<folder>/train_curves.png``).
    cb_vocab : int
        Codebook size, for the ln(V) line of the loss.
    missing_ok : bool
        A run without logged steps yet (fewer than ``log_interval`` steps)
        is logged and skipped (returns None) instead of refused: what the
        recipes pass at the end of a run.

    Returns
    -------
    Path, or None (nothing to plot, ``missing_ok``)

    Example
    -------
    >>> import tempfile
    >>> plot_run(tempfile.mkdtemp(), missing_ok=True) is None
    True
    >>> plot_run(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    FileNotFoundError: No train_steps_log.txt in ...
    """
    import logging

    folder = Path(folder)
    steps_log = folder / STEPS_LOG
    if missing_ok and (not steps_log.is_file() or not steps_log.read_text().strip()):
        logging.getLogger(__name__).info(
            f"No training curves: {steps_log} has no step logged yet "
            "(fewer optimizer steps than log_interval)."
        )
        return None
    import matplotlib

    matplotlib.use("Agg")
    # (its font search logs hundreds of DEBUG lines into the run's log.txt)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt
    steps, epochs = read_run(folder)
    if not steps:
        raise ValueError(f"{folder / STEPS_LOG} is empty: nothing to plot yet.")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    (ax_loss, ax_acc), (ax_codes, ax_opt) = axes

    _plot(ax_loss, steps, "loss", label="train (batch)", lw=1)
    _plot(ax_loss, epochs, "valid loss", "o-", x="steps", label="valid (epoch)")
    ax_loss.axhline(math.log(cb_vocab), color="grey", ls=":", label=f"ln {cb_vocab} (uniform)")
    ax_loss.set_ylabel("masked cross-entropy")
    ax_loss.set_title("loss")

    _plot(ax_acc, steps, "masked_acc", label="train")
    _plot(ax_acc, epochs, "valid masked_acc", "o-", x="steps", label="valid (epoch)")
    _plot(ax_acc, steps, "top_code_share", "--", color="grey",
          label="chance (most frequent code)")
    ax_acc.set_ylabel("accuracy on masked frames")
    ax_acc.set_title("masked-prediction accuracy")

    for key, label in (("codes_used", "codes used by the targets"),
                       ("code_ppl", "targets' perplexity"),
                       ("pred_ppl", "predictions' perplexity")):
        _plot(ax_codes, steps, key, label=label)
    ax_codes.set_yscale("log")
    ax_codes.set_title(f"code usage (of {cb_vocab})")

    _plot(ax_opt, steps, "grad_norm", label="gradient norm (before clipping)")
    ax_opt.set_ylabel("gradient norm")
    ax_opt.set_title("optimisation")
    ax_lr = ax_opt.twinx()
    _plot(ax_lr, steps, "lr", color="tab:red", lw=1, label="learning rate")
    ax_lr.set_ylabel("learning rate", color="tab:red")

    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle(f"BEST-RQ pretraining: {folder}", fontsize=9)
    fig.tight_layout()
    out = Path(out) if out is not None else folder / PNG
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="pretraining output folder (train_steps_log.txt)")
    parser.add_argument("--out", default=None, help=f"PNG to write (default <folder>/{PNG})")
    parser.add_argument("--cb_vocab", type=int, default=8192, help="codebook size (8192)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.folder, args.out, args.cb_vocab)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"plot_run: error: {err}\n")
    print(path)


if __name__ == "__main__":
    main()
