#!/usr/bin/env python3
"""Fine-tuning a pretrained BEST-RQ encoder (any token mixer) for CTC speech
recognition on LibriSpeech or a Libri-light limited-resource set.

The encoder of a BEST-RQ pretraining run (HyperMixing, Fastformer,
SummaryMixing, Mamba or MHSA Conformer) is rebuilt from its checkpoint
(``--pretrained_path``, as for the MP3S probes) and trained whole, with a
DNN head and a CTC output layer, as SpeechBrain's
``recipes/LibriSpeech/ASR/CTC/train_with_bestrq.py`` does:

* two optimisers, the encoder's (AdamW 5e-5) and the head's (AdamW 3e-4),
  each annealed by its own NewBob schedule on the validation loss; the
  encoder optionally frozen for the first ``freeze_encoder_steps`` steps
  (or the whole run, ``freeze_encoder``);
* the pretraining's feature statistics, never updated; the encoder in train
  mode (dropout, LayerDrop as ``encoder_runtime`` and the checkpoint say);
* speed perturbation, frequency and chunk drop on a copy of each training
  batch (SpeechBrain's ``Augmenter``) and BEST-RQ span masking with noise
  of the encoder input (``mask_prob``);
* characters (``token_type: char``) or SentencePiece units trained on the
  training transcripts (``token_type: bpe``);
* greedy decoding for the validation WER; the best checkpoint (lowest dev
  WER) tested with greedy decoding and CTC beam search, with a KenLM n-gram
  when ``kenlm_model_path`` names one (``lobes.brains.lm_decoding.make_lm_searcher``,
  shared with the MP3S probes); WER files per test set.

Training sets: ``hparams/train_clean_100.yaml`` (train-clean-100, the
references' setting), ``hparams/train_960.yaml`` (960 h) and
``hparams/librilight_10h.yaml`` (Libri-light's 10 h, 1 h or 10 min
``librispeech_finetuning`` sets, ``librispeech_finetuning_prepare.py``).
``init_from_pretrained: False`` trains the same architecture from random
initialisation. A killed run restarts from its last checkpoint with the
same command; a finished one started again only tests (how the LM rows are
decoded after training).

To run this recipe::

    python train.py hparams/train_clean_100.yaml \\
        --data_folder=/path/to/LibriSpeech \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from lobes.brains.ctc import CTCDecoding, add_output_layer
from lobes.dataio.asr import (
    char_tokenizer,
    load_datasets,
    subword_tokenizer,
    vocabulary,
)
from lobes.brains.lm_decoding import check_lm_decoding, make_lm_searcher
from lobes.dataio.audio import load_audio
from lobes.brains.finetuning import FineTuneBrain, initialise_encoder
from lobes.dataio.batching import train_loader_kwargs
from lobes.brains.probing import checkpoint_to_test
from lobes.recipe import load_hparams, lock_output_folder, record_encoder
from lobes.recipe import parse_arguments

# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "ft_encoder", "encoder_opt_class", "freeze_encoder_steps",
                 "init_from_pretrained", "librilight_subset", "token_type")
TOKEN_TYPES = ("char", "bpe", "unigram")


class ASR(CTCDecoding, FineTuneBrain):
    """CTC on a fine-tuned encoder (decoding and metrics: ``CTCDecoding``;
    optimisers, freezing, annealing: ``FineTuneBrain``)."""

    def compute_forward(self, batch, stage):
        """Waveforms -> CTC log-probabilities (B, T', V), relative lengths
        and, outside training, the hypotheses of each decoding."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.wav_augment is not None:
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
        feats = self.hparams.compute_features(wavs)
        enc = self.encode(feats, wav_lens, stage)  # (B, T', D)
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(self.modules.head(enc)))
        return p_ctc, wav_lens, self.decode(p_ctc, wav_lens, stage)

    def ctc_targets(self, batch, stage):
        """The transcripts' units, repeated for the augmented copies."""
        tokens, tokens_lens = batch.tokens
        if stage == sb.Stage.TRAIN and self.hparams.wav_augment is not None:
            tokens = self.hparams.wav_augment.replicate_labels(tokens)
            tokens_lens = self.hparams.wav_augment.replicate_labels(tokens_lens)
        return tokens, tokens_lens

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, WER/CER and learning rates; anneals on the validation
        loss, keeps the checkpoint of lowest validation WER, and writes the
        WER files of a test set."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = self.error_rates(stage_loss)
        if stage == sb.Stage.VALID:
            lrs = self.anneal(stats["loss"])
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "steps": self.optimizer_step, **lrs,
                            "encoder_frozen": self.encoder_frozen()},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"]}, min_keys=["WER"]
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current,
                            "test set": self.test_set_name},
                test_stats=stats,
            )
            self.write_wer_files()


def prepare_data(hparams):
    """Writes the CSVs: LibriSpeech's dev and test splits and the training
    set, LibriSpeech ``train_splits`` merged, or the Libri-light set
    ``librilight_subset`` of ``librilight_folder``."""
    from lobes.dataio.librispeech_prepare import prepare_from_hparams

    librilight = hparams["librilight_subset"] is not None
    if librilight and hparams["train_splits"]:
        raise ValueError(
            f"librilight_subset: {hparams['librilight_subset']} and train_splits: "
            f"{hparams['train_splits']} are both set: train on one (train_splits: [] "
            "with a Libri-light set)."
        )
    prepare_from_hparams(hparams)
    if librilight:
        from librispeech_finetuning_prepare import prepare_librilight_finetuning

        run_on_main(
            prepare_librilight_finetuning,
            kwargs={
                "data_folder": hparams["librilight_folder"],
                "save_folder": hparams["output_folder"],
                "subset": hparams["librilight_subset"],
                "csv_name": "train.csv",
                "skip_prep": hparams["skip_prep"],
                "check_audio": hparams["check_audio"],
                "skip_bad_audio": hparams["skip_bad_audio"],
            },
        )


def dataio_prepare(hparams):
    """Datasets of the prepared CSVs, with audio and unit pipelines.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    test_datasets : dict
        Test set name (CSV stem, e.g. ``test-clean``) -> dataset.
    tokenizer : CTCTextEncoder or SentencePiece
        Characters, or SentencePiece units trained on the training
        transcripts (``token_type``); saved in ``save_folder``.
    """
    if hparams["token_type"] not in TOKEN_TYPES:
        raise ValueError(
            f"token_type: {hparams['token_type']!r} in the YAML; use char "
            "(characters) or bpe / unigram (SentencePiece units)."
        )
    train_data, valid_data, test_datasets = load_datasets(hparams)
    datasets = [train_data, valid_data, *test_datasets.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    if hparams["token_type"] == "char":
        tokenizer = char_tokenizer(hparams, train_data, datasets)
    else:
        tokenizer = subword_tokenizer(hparams, datasets)
    return train_data, valid_data, test_datasets, tokenizer


if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    tested = checkpoint_to_test(hparams["test_checkpoint"], "WER")  # checked now
    check_lm_decoding(hparams)  # now, not after training
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)
    prepare_data(hparams)
    train_data, valid_data, test_datasets, tokenizer = dataio_prepare(hparams)
    add_output_layer(hparams, tokenizer)
    initialise_encoder(
        hparams["pretrained_path"], hparams["encoder"], hparams["normalize"],
        from_pretrained=hparams["init_from_pretrained"],
    )

    asr_brain = ASR(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.tokenizer = tokenizer
    asr_brain.test_searcher, asr_brain.beam_kind = make_lm_searcher(
        hparams, vocabulary(tokenizer)
    )
    asr_brain.fit(
        asr_brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_loader_kwargs(hparams, train_data),
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    for name, test_data in test_datasets.items():
        asr_brain.test_set_name = name
        asr_brain.evaluate(
            test_data, test_loader_kwargs=hparams["test_dataloader_opts"], **tested
        )
