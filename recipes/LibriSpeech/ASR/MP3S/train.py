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
that is how the LM rows are decoded after training.

To run this recipe::

    python train.py hparams/bilstm_ctc.yaml \\
        --data_folder=/path/to/LibriSpeech \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import inspect
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from lobes.asr_probe import check_lm_decoding, make_lm_searcher
from lobes.dataio import filter_by_duration, load_audio
from lobes.training import parse_arguments
from lobes.probing import ProbeBrain, checkpoint_to_test
from lobes.recipe import load_hparams, record_encoder

logger = get_logger(__name__)
# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "train_splits", "test_splits", "output_neurons", "ctc_lin")


class ASRProbe(ProbeBrain):
    """Character CTC on the weighted layer sum of a frozen encoder."""

    def compute_forward(self, batch, stage):
        """Waveforms -> CTC log-probabilities (B, T', V) and, outside
        training, the greedy (and at test, beam-search) hypotheses."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.encode(wavs, wav_lens, batch.id)  # (B, T', D)
        enc = self.modules.enc
        if "lengths" in inspect.signature(enc.forward).parameters:  # RNNs
            # packed by length (pack_lstm: True), or padded as in MP3S
            out = enc(feats, lengths=wav_lens if self.hparams.pack_lstm else None)
        else:
            out = enc(feats)
        if isinstance(out, tuple):  # (output, hidden) of an RNN
            out = out[0]
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(out))
        hyps = {}
        if stage != sb.Stage.TRAIN:
            hyps["greedy"] = sb.decoders.ctc_greedy_decode(
                p_ctc, wav_lens, blank_id=self.hparams.blank_index
            )
        if stage == sb.Stage.TEST and self.test_searcher is not None:
            found = self.test_searcher(p_ctc, wav_lens)
            hyps[self.beam_kind] = [h if isinstance(h, str) else h[0].text for h in found]
        return p_ctc, wav_lens, hyps

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; WER/CER of each decoding outside training."""
        p_ctc, wav_lens, hyps = predictions
        tokens, tokens_lens = batch.tokens
        loss = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        if stage != sb.Stage.TRAIN:
            targets = [wrd.split(" ") for wrd in batch.wrd]
            for kind, hyp in hyps.items():
                if kind == "greedy":
                    words = [
                        "".join(self.tokenizer.decode_ndim(seq)).split(" ")
                        for seq in hyp
                    ]
                else:  # texts of the beam search
                    words = [text.split(" ") for text in hyp]
                self.wer_metrics[kind].append(batch.id, words, targets)
                self.cer_metrics[kind].append(batch.id, words, targets)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Fresh WER/CER trackers for validation and test."""
        if stage != sb.Stage.TRAIN:
            kinds = ["greedy"]
            if stage == sb.Stage.TEST and self.test_searcher is not None:
                kinds.append(self.beam_kind)
            self.wer_metrics = {k: self.hparams.error_rate_computer() for k in kinds}
            self.cer_metrics = {k: self.hparams.cer_computer() for k in kinds}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, WER/CER and layer weights; anneals, checkpoints, and
        writes the WER files of a test set."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss}
        for kind in self.wer_metrics:
            suffix = "" if kind == "greedy" else f"_{kind}"
            stats["WER" + suffix] = self.wer_metrics[kind].summarize("error_rate")
            stats["CER" + suffix] = self.cer_metrics[kind].summarize("error_rate")
        if stage == sb.Stage.VALID:
            lrs = self.anneal(stats["loss"])
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **lrs,
                            "layer_weights": self.layer_weights_summary()},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"]}, min_keys=["WER"]
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current,
                            "test set": self.test_set_name,
                            "layer_weights": self.layer_weights_summary()},
                test_stats=stats,
            )
            if if_main_process():
                for kind, metric in self.wer_metrics.items():
                    path = Path(self.hparams.output_wer_folder) / (
                        f"wer_{self.test_set_name}_{kind}.txt"
                    )
                    with open(path, "w", encoding="utf-8") as fout:
                        metric.write_stats(fout)


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
    train_data = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["train_csv"])
    limits = [
        "train", hparams["avoid_if_shorter_than"], hparams["avoid_if_longer_than"]
    ]
    if hparams["sorting"] in ("ascending", "descending"):
        train_data = filter_by_duration(
            train_data, *limits,
            sort_key="duration", reverse=hparams["sorting"] == "descending",
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif hparams["sorting"] == "random":
        train_data = filter_by_duration(train_data, *limits)
    else:
        raise ValueError(
            f"sorting: {hparams['sorting']!r} in the YAML; use random, ascending or descending."
        )
    valid_data = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["valid_csv"])
    valid_data = valid_data.filtered_sorted(sort_key="duration")
    test_datasets = {}
    for csv_file in hparams["test_csv"]:
        name = Path(csv_file).stem
        test_datasets[name] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_file
        ).filtered_sorted(sort_key="duration")
    datasets = [train_data, valid_data, *test_datasets.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    label_encoder = sb.dataio.encoder.CTCTextEncoder()

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "char_list", "tokens")
    def text_pipeline(wrd):
        yield wrd
        char_list = list(wrd)
        yield char_list
        yield torch.LongTensor(label_encoder.encode_sequence(char_list))

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[train_data],
        output_key="char_list",
        special_labels={
            "blank_label": hparams["blank_index"],
            "unk_label": hparams["unk_label"],  # a label, not an index
        },
        sequence_input=True,
    )
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])
    return train_data, valid_data, test_datasets, label_encoder


def add_output_layer(hparams, label_encoder):
    """Builds ``ctc_lin`` (a YAML partial) with one output per character
    (blank and unk included) and adds it to ``model`` and ``modules``."""
    n_tokens = len(label_encoder)
    label_encoder.expect_len(n_tokens)
    if hparams.get("output_neurons") not in (None, n_tokens):
        logger.warning(
            f"{n_tokens} CTC tokens in the training transcripts, "
            f"{hparams['output_neurons']} expected (output_neurons in the YAML)."
        )
    ctc_lin = hparams["ctc_lin"](n_neurons=n_tokens)
    hparams["model"].append(ctc_lin)
    hparams["modules"]["ctc_lin"] = ctc_lin


def make_test_searcher(hparams, label_encoder):
    """The test-time beam search over the character vocabulary
    (``lobes.asr_probe.make_lm_searcher``: SpeechBrain's ``CTCBeamSearcher``
    with the n-gram LM of ``kenlm_model_path`` if any, or pyctcdecode's with
    ``lm_decoder: pyctcdecode``; None if ``use_beam_search`` is off), and
    the name of its results: ``beam`` or ``beam_lm``."""
    ind2lab = label_encoder.ind2lab
    return make_lm_searcher(hparams, [ind2lab[i] for i in range(len(ind2lab))])


if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    check_lm_decoding(hparams)  # now, not after training
    tested = checkpoint_to_test(hparams["test_checkpoint"], "WER")
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from lobes.librispeech_prepare import prepare_from_hparams

    prepare_from_hparams(hparams)
    train_data, valid_data, test_datasets, label_encoder = dataio_prepare(hparams)
    add_output_layer(hparams, label_encoder)
    hparams["weighted_ssl"].load_pretrained(hparams["pretrained_path"])

    asr_brain = ASRProbe(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.tokenizer = label_encoder
    asr_brain.test_searcher, asr_brain.beam_kind = make_test_searcher(hparams, label_encoder)
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
