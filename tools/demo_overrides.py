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

# Mixer-specific sizes of the demo encoder (the paper's ratios, ~1/6 width).
DEMO_MIXER_KWARGS = {
    "summarymixing": "{local_proj_hid_dim: [88], local_proj_out_dim: 88, summary_hid_dim: [176]}",
    "hypermixing": "{hypernet_size: 256}",
    "mamba": "{d_state: 8, d_conv: 4, expand: 2}",
}
DEMO_WIDTH = {
    "mhsa": 96,
    "mhsa_sdpa": 96,
    "hypermixing": 112,
    "fastformer": 104,
    "summarymixing": 88,
    "mamba": 80,
}


def demo_encoder_override(mixer, layers=3):
    """The ``--encoder_overrides={...}`` override of the demo-size encoder
    (same mixer and code as the paper's, smaller)."""
    nhead = 1 if mixer in ("summarymixing", "mamba") else 4
    return (
        f"--encoder_overrides={{num_layers: {layers}, d_model: {DEMO_WIDTH[mixer]}, "
        f"d_ffn: 256, kernel_size: 15, dropout: 0.0, layerdrop_prob: 0.0, "
        f"nhead: {nhead}, mixer_kwargs: {DEMO_MIXER_KWARGS.get(mixer, '{}')}}}"
    )


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
