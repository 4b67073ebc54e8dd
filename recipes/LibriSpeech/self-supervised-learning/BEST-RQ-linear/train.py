#!/usr/bin/env python3
"""Recipe for BEST-RQ pretraining of a Conformer with a linear-complexity
token mixer (HyperMixing, Fastformer, SummaryMixing, bidirectional Mamba) or
MHSA, on LibriSpeech 960 h, as in "An Analysis of Linear Complexity Attention
Substitutes with BEST-RQ" (Whetten et al., SLT 2024).

To run this recipe:

    python train.py hparams/bestrq_summarymixing.yaml --data_folder /path/to/LibriSpeech

Multi-GPU (DDP):

    torchrun --nproc_per_node=8 train.py hparams/bestrq_summarymixing.yaml \
        --data_folder /path/to/LibriSpeech --precision=bf16

A killed run resumes from its last checkpoint when started again with the
same command.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from lobes.recipe import parse_arguments
from lobes.brains.pretraining import BestRQBrain
from lobes.dataio.pretraining import dataio_prepare
from lobes.deploy.export import export_encoder
from lobes.utils.plot_run import plot_run
from lobes.recipe import export_folders, load_hparams, lock_output_folder, record_encoder

# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("train_splits", "train_csv", "valid_csv", "mask_prob", "quantizer", "head")

if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)

    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from lobes.dataio.librispeech_prepare import prepare_from_hparams

    prepare_from_hparams(hparams, test_splits=False)

    train_data, valid_data, train_loader_kwargs = dataio_prepare(hparams)

    brain = BestRQBrain(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_loader_kwargs,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    # The encoder folder for lobes.deploy.inference.BestRQEncoder and the MP3S
    # probes (under --debug: the debug model, in SpeechBrain's temporary folder)
    save_folder, export_folder = export_folders(brain, hparams)
    run_on_main(
        export_encoder,
        kwargs={"checkpoint": save_folder, "out_folder": export_folder},
    )
    # Loss, masked accuracy and code usage against steps
    run_on_main(
        plot_run,
        kwargs={
            "folder": hparams["output_folder"],
            "out": hparams["train_curves"],
            "cb_vocab": hparams["cb_vocab"],
            "missing_ok": True,  # a run shorter than log_interval
        },
    )
