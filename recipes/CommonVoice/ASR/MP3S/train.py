#!/usr/bin/env python3
"""MP3S low-resource ASR probe on a frozen BEST-RQ encoder: Common Voice
11.0 Welsh (``--language=cy``) or Basque (``--language=eu``), CTC over
SentencePiece units.

The encoder of a BEST-RQ pretraining run (any mixer) is frozen; a learned
softmax-weighted sum of all its hidden layers feeds a CTC probe trained on
the release's ``train.tsv`` and evaluated on ``dev.tsv`` and ``test.tsv``,
as in the MP3S benchmark (Zaiem et al., 2023; speechbrain/benchmarks
benchmarks/MP3S/CommonVoice). Two probes, one YAML each:

* ``hparams/bilstm_ctc.yaml``: 2-layer BiLSTM (1024 units), 20 epochs;
* ``hparams/linear.yaml``: one dense layer (1024 sigmoid units), 20 epochs.

Units: 100 SentencePiece BPE pieces trained on the training sentences
(MP3S's text normalisation keeps case, accents and punctuation for Welsh
and Basque: ``common_voice_prepare.py``). Adam (lr 2e-4) on the probe, Adam
(lr 0.01) on the layer weights, NewBob annealing of both on the validation
loss; training clips up to 10 s; validation WER with greedy decoding; the
best checkpoint (lowest validation WER) is tested with greedy decoding and
CTC beam search. The probe itself is ``lobes.brains.ctc`` (shared with the
Buckeye recipe). WER details go to ``<output_folder>/wer_test_{greedy,beam}.txt``.

To run this recipe::

    python train.py hparams/bilstm_ctc.yaml --language=cy \\
        --data_folder=/path/to/cv-corpus-11.0-2022-09-21/cy \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from lobes.brains.ctc import build_probe
from lobes.brains.lm_decoding import check_lm_decoding
from lobes.dataio.asr import load_datasets, subword_tokenizer
from lobes.dataio.audio import load_audio
from lobes.brains.probing import checkpoint_to_test
from lobes.recipe import load_hparams, lock_output_folder, record_encoder
from lobes.recipe import parse_arguments

# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "language", "output_neurons")


def dataio_prepare(hparams):
    """Datasets of the prepared CSVs: MP3 clips resampled to
    ``sample_rate``; SentencePiece units as CTC units (trained here, once,
    on the training sentences).

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    test_datasets : dict
        ``{"test": dataset}``.
    tokenizer : speechbrain.tokenizers.SentencePiece.SentencePiece
    """
    train_data, valid_data, test_datasets = load_datasets(hparams)
    datasets = [train_data, valid_data, *test_datasets.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    tokenizer = subword_tokenizer(hparams, datasets)
    return train_data, valid_data, test_datasets, tokenizer


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

    from common_voice_prepare import prepare_common_voice

    run_on_main(
        prepare_common_voice,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "language": hparams["language"],
            "accented_letters": hparams["accented_letters"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )
    train_data, valid_data, test_datasets, tokenizer = dataio_prepare(hparams)
    asr_brain = build_probe(hparams, run_opts, tokenizer)  # lobes.brains.ctc.CTCProbe
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
