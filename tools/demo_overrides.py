"""Command-line overrides that shrink a BEST-RQ recipe to the demo corpus.

One place for the demo-size settings, used by ``tools/run_demo.sh`` and the
end-to-end tests: a small encoder (same mixer, same code), a short schedule
and small dynamic batches, so that pretraining runs in minutes on a CPU.

Example: ``python tools/demo_overrides.py summarymixing --epochs 3``
prints ``--encoder_overrides={...}``, ``--number_of_epochs=3``, ... one per
line. The probes need none of it: they rebuild the encoder from its
checkpoint.
"""

import argparse

from lobes.nnet.mixers import MIXERS, check_mixer_name

def _flow(value):
    """``value`` in YAML flow style, as a command-line override takes it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def demo_encoder_override(mixer, layers=3):
    """The ``--encoder_overrides={...}`` override of the demo-size encoder
    (same mixer and code as the paper's, smaller): the ``demo`` sizes of the
    mixer's registry entry (``lobes.nnet.mixers.MIXERS``).

    Example
    -------
    >>> demo_encoder_override("fastformer", layers=2)
    '--encoder_overrides={num_layers: 2, d_model: 104, d_ffn: 256, kernel_size: 15, dropout: 0.0, layerdrop_prob: 0.0, nhead: 4, mixer_kwargs: {}}'
    """
    check_mixer_name(mixer)
    demo = MIXERS[mixer].demo
    if "d_model" not in demo:
        raise ValueError(
            f"Mixer {mixer!r} has no demo size: set `demo` in its MixerSpec "
            "(lobes/nnet/mixers/__init__.py)."
        )
    overrides = {
        "num_layers": layers,
        "d_model": demo["d_model"],
        "d_ffn": 256,
        "kernel_size": 15,
        "dropout": 0.0,
        "layerdrop_prob": 0.0,
        "nhead": demo.get("nhead", 1),
        "mixer_kwargs": demo.get("mixer_kwargs", {}),
    }
    return f"--encoder_overrides={_flow(overrides)}"


# What the tests pretrain on (8.5 min) and what `make demo` does (~30 min: as
# the paper pretrains on more than the ASR probe's train-clean-100).
TEST_SPLITS = ("train-clean-100",)
DEMO_SPLITS = ("train-clean-100", "train-clean-360")


def demo_overrides(mixer, epochs=25, layers=3, train_splits=TEST_SPLITS):
    """Returns the list of ``--key=value`` overrides for the demo run."""
    return [
        demo_encoder_override(mixer, layers),
        f"--number_of_epochs={epochs}",
        "--precision=fp32",
        f"--train_splits=[{', '.join(train_splits)}]",
        "--dev_splits=[dev-clean]",
        "--lr=0.002",
        "--warmup_steps=40",
        "--grad_accumulation_factor=1",
        "--log_interval=10",
        "--avoid_if_shorter_than=1.0",
        "--dynamic_batch_sampler={max_batch_length: 30, num_buckets: 4, shuffle: True, batch_ordering: random}",
        "--train_dataloader_opts={batch_size: 4, num_workers: 0}",
        "--valid_dataloader_opts={batch_size: 4, num_workers: 0}",
        "--checkpoints_to_keep=1",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mixer")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--train_splits", default=",".join(TEST_SPLITS),
                        help=f"comma-separated LibriSpeech splits (make demo: {','.join(DEMO_SPLITS)})")
    args = parser.parse_args()
    splits = [s for s in args.train_splits.split(",") if s]
    print("\n".join(demo_overrides(args.mixer, args.epochs, args.layers, splits)))
