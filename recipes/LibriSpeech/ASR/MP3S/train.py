#!/usr/bin/env python3
"""MP3S LibriSpeech ASR probe on a frozen BEST-RQ encoder (character CTC).

The encoder of a BEST-RQ pretraining run (any mixer) is frozen; a learned
softmax-weighted sum of all its hidden layers feeds a CTC probe trained on
train-clean-100 and evaluated on dev-clean, test-clean and test-other, as in
the MP3S benchmark (Zaiem et al., 2023; speechbrain/benchmarks
benchmarks/MP3S/LibriSpeech). Two probes, one YAML each:

* ``hparams/bilstm_ctc.yaml``: 2-layer BiLSTM (1024 units), 20 epochs;
* ``hparams/contextnet.yaml``: SpeechBrain's ContextNet (unit strides),
  2 epochs.

Characters (``CTCTextEncoder``, blank 0, unk 1); the CTC output layer is
sized from the character set. Adam (lr 2e-4) on the probe, Adam (lr 0.01) on
the layer weights, NewBob annealing of both on the validation loss;
validation WER with greedy decoding; the best checkpoint (lowest dev WER;
``test_checkpoint: last``, the last epoch, as MP3S in 2023) is tested with
greedy decoding *and* SpeechBrain's CTC beam search, with a KenLM
n-gram when ``kenlm_model_path`` names one (shallow fusion, ``alpha``,
``beta`` in ``test_beam_search``; ``lm_decoder: pyctcdecode`` decodes with
pyctcdecode as MP3S did in 2023; the packages it needs are checked at
start-up, and their absence refused with the command that installs them).
WER details go to ``<output_folder>/wer_<test set>_{greedy,beam,beam_lm}.txt``.
Run again with the same output folder, a trained probe is only tested:
that is how the LM rows are decoded after training. The probe, its
decoding and its metrics are ``lobes.brains.ctc`` (shared with the Buckeye
and CommonVoice recipes).

To run this recipe::

    python train.py hparams/bilstm_ctc.yaml \\
        --data_folder=/path/to/LibriSpeech \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import sys

import speechbrain as sb

from lobes.brains.ctc import build_probe
from lobes.dataio.asr import char_tokenizer, load_datasets
from lobes.brains.lm_decoding import check_lm_decoding
from lobes.dataio.audio import load_audio
from lobes.brains.probing import checkpoint_to_test
from lobes.recipe import load_hparams, lock_output_folder, record_encoder
from lobes.recipe import parse_arguments

# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "train_splits", "test_splits", "output_neurons", "ctc_lin")


def dataio_prepare(hparams):
    """Datasets of the prepared CSVs, audio and character pipelines.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    test_datasets : dict
        Test set name (CSV stem, e.g. ``test-clean``) -> dataset.
    label_encoder : speechbrain.dataio.encoder.CTCTextEncoder
        Characters of the training transcripts, blank and unk (saved in
        ``save_folder``).
    """
    train_data, valid_data, test_datasets = load_datasets(hparams)
    datasets = [train_data, valid_data, *test_datasets.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    label_encoder = char_tokenizer(hparams, train_data, datasets)
    return train_data, valid_data, test_datasets, label_encoder


if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    check_lm_decoding(hparams)  # now, not after training
    tested = checkpoint_to_test(hparams["test_checkpoint"], "WER")
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from lobes.dataio.librispeech_prepare import prepare_from_hparams

    prepare_from_hparams(hparams)
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
            test_data, test_loader_kwargs=hparams["test_dataloader_opts"], **tested
        )
