#!/usr/bin/env python3
"""Recipe for BEST-RQ pretraining with a linear-complexity token mixer on
LibriLight (the users' scale-up of the LibriSpeech recipe: 60k h of long
audiobook files, segmented by their voice activity into <= 30 s chunks).
Validation uses LibriSpeech dev-clean.

To run this recipe:

    python train.py hparams/bestrq_summarymixing.yaml \
        --data_folder /path/to/librilight --valid_data_folder /path/to/LibriSpeech

Multi-GPU (DDP): ``torchrun --nproc_per_node=8 train.py ...``. A killed run
resumes from its last checkpoint when started again with the same command.

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
REQUIRED_KEYS = ("train_splits", "valid_data_folder", "max_segment_duration", "mask_prob", "quantizer", "head")

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

    from librilight_prepare import prepare_librilight  # noqa: E402
    from lobes.dataio.librispeech_prepare import prepare_librispeech

    run_on_main(
        prepare_librilight,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "splits": hparams["train_splits"],
            "max_segment_duration": hparams["max_segment_duration"],
            "min_segment_duration": hparams["avoid_if_shorter_than"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )
    run_on_main(
        prepare_librispeech,
        kwargs={
            "data_folder": hparams["valid_data_folder"],
            "save_folder": hparams["output_folder"],
            "dev_splits": hparams["dev_splits"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )

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
