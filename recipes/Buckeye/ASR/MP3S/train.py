#!/usr/bin/env python3
"""MP3S Buckeye ASR probe on a frozen BEST-RQ encoder (character CTC).

The encoder of a BEST-RQ pretraining run (any mixer) is frozen; a learned
softmax-weighted sum of all its hidden layers feeds a CTC probe trained on
the conversational English of the Buckeye corpus, as in the MP3S benchmark
(Zaiem et al., 2023; speechbrain/benchmarks benchmarks/MP3S/Buckeye):
utterances cut at pauses and non-speech from the word alignments
(``buckeye_prepare.py``), speakers s36-s37 for validation, s38-s40 for
test, the others for training. Two probes, one YAML each:

* ``hparams/bilstm_ctc.yaml``: 2-layer BiLSTM (1024 units), 20 epochs;
* ``hparams/contextnet.yaml``: SpeechBrain's ContextNet (unit strides),
  20 epochs.

Characters (``CTCTextEncoder``, blank 0, ``<unk>``); Adam (lr 2e-4) on the
probe, Adam (lr 0.01) on the layer weights, NewBob annealing of both on the
validation loss; validation WER with greedy decoding; the best checkpoint
(lowest validation WER) is tested with greedy decoding and CTC beam search.
The probe itself is ``lobes.brains.ctc`` (shared with the CommonVoice
recipe). WER details go to ``<output_folder>/wer_test_{greedy,beam}.txt``.

To run this recipe::

    python train.py hparams/bilstm_ctc.yaml \\
        --data_folder=/path/to/buckeye \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from lobes.brains.ctc import build_probe
from lobes.dataio.asr import char_tokenizer, load_datasets
from lobes.brains.lm_decoding import check_lm_decoding
from lobes.dataio.audio import load_audio
from lobes.brains.probing import checkpoint_to_test
from lobes.recipe import load_hparams, lock_output_folder, record_encoder
from lobes.recipe import parse_arguments

# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "test_speakers", "min_segment_words", "output_neurons")


def dataio_prepare(hparams):
    """Datasets of the prepared CSVs: each utterance is a segment
    (``start``-``stop``, in samples) of a track's WAV file; characters as
    CTC units.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    test_datasets : dict
        ``{"test": dataset}``.
    label_encoder : speechbrain.dataio.encoder.CTCTextEncoder
    """
    train_data, valid_data, test_datasets = load_datasets(hparams)
    datasets = [train_data, valid_data, *test_datasets.values()]

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        segment = {"file": wav, "start": int(start), "stop": int(stop)}
        return load_audio(segment, hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    label_encoder = char_tokenizer(hparams, train_data, datasets)
    return train_data, valid_data, test_datasets, label_encoder


if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    check_lm_decoding(hparams)  # now, not after training
    tested = checkpoint_to_test(hparams["test_checkpoint"], "WER")  # checked now
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from buckeye_prepare import prepare_buckeye

    run_on_main(
        prepare_buckeye,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "extract_folder": hparams["extract_folder"],
            "dev_speakers": hparams["dev_speakers"],
            "test_speakers": hparams["test_speakers"],
            "min_duration": hparams["min_segment_duration"],
            "min_words": hparams["min_segment_words"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )
    train_data, valid_data, test_datasets, label_encoder = dataio_prepare(hparams)
    asr_brain = build_probe(hparams, run_opts, label_encoder)  # lobes.brains.ctc.CTCProbe
    asr_brain.fit(
        asr_brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    os.makedirs(hparams["output_wer_folder"], exist_ok=True)
    for name, test_data in test_datasets.items():
        asr_brain.test_set_name = name
        asr_brain.evaluate(
            test_data,
            test_loader_kwargs=hparams["test_dataloader_opts"],
            **tested,
        )
