"""CTC speech recognition on BEST-RQ encoders, shared by recipes: the MP3S
ASR probes and the fine-tuning recipe.

The MP3S ASR tasks (Zaiem et al., 2023; speechbrain/benchmarks
``benchmarks/MP3S``) all train the same kind of probe: the learned weighted
sum of a frozen encoder's hidden states feeds a small network (BiLSTM,
ContextNet or one dense layer) and a linear CTC output layer, trained with
the CTC loss; the word error rate is measured with greedy decoding on the
validation set and, with the best checkpoint, with greedy decoding *and*
SpeechBrain's CTC beam search on each test set. What differs between the
tasks is the data (each recipe's ``dataio_prepare``) and the output units:

* characters (Buckeye, LibriSpeech): SpeechBrain's ``CTCTextEncoder`` built
  from the training transcripts, blank 0, an ``<unk>`` label for characters
  unseen in training (:func:`char_tokenizer`);
* subwords (CommonVoice): a SentencePiece model (BPE, 100 units in MP3S)
  trained on the training transcripts (:func:`subword_tokenizer`).

Fine-tuning a whole encoder
with a CTC head (``recipes/LibriSpeech/ASR/CTC-BEST-RQ-linear``) uses the
same pieces: :class:`CTCDecoding` (loss, greedy and beam decoding, WER/CER,
WER files) is a mixin of any ``Brain``; :func:`make_lm_searcher` builds the
beam search, with an optional KenLM n-gram (SpeechBrain's shallow fusion,
or pyctcdecode as MP3S and the BEST-RQ study did in 2023;
:func:`check_lm_decoding` refuses what could not run, at start-up).

A recipe's ``train.py`` keeps SpeechBrain's usual shape: it prepares the
data, builds its datasets and audio pipeline, then uses the pieces here::

    train, valid, tests = load_datasets(hparams)
    ...  # the recipe's audio pipeline on [train, valid, *tests.values()]
    tokenizer = char_tokenizer(hparams, train, datasets)
    asr_brain = build_probe(hparams, run_opts, tokenizer)  # a CTCProbe
    asr_brain.fit(...)  # then evaluate() each test set

Hyperparameters read from the YAML: ``train_csv``, ``valid_csv``,
``test_csv`` (a list), ``sorting``, ``avoid_if_longer_than``,
``avoid_if_shorter_than``, ``train_dataloader_opts``, ``save_folder``,
``blank_index``, ``unk_label`` (characters) or ``output_neurons``,
``token_type``, ``character_coverage`` (subwords), ``ctc_lin`` (a partial
of the output layer), ``model``, ``modules``, ``log_softmax``,
``ctc_cost``, ``error_rate_computer``, ``cer_computer``,
``use_beam_search``, ``test_beam_search``, ``output_wer_folder``,
``train_logger``, ``checkpointer``, ``epoch_counter``, plus those of
:class:`lobes.brains.probing.ProbeBrain`; ``lm_decoder`` (optional).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import inspect
import os
from pathlib import Path

import speechbrain as sb
from speechbrain.dataio.encoder import CTCTextEncoder
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from lobes.brains.lm_decoding import make_lm_searcher
from lobes.brains.probing import ProbeBrain
from lobes.dataio.asr import ids_to_words, vocabulary

logger = get_logger(__name__)


class CTCDecoding:
    """CTC loss, decoding and error rates of a speech-recognition ``Brain``
    (a mixin: ``class MyASR(CTCDecoding, SomeBrain)``).

    The ``Brain``'s ``compute_forward`` returns ``(p_ctc, wav_lens, hyps)``:
    CTC log-probabilities (B, T, V), relative lengths (B,) and
    ``hyps = self.decode(p_ctc, wav_lens, stage)``. This mixin then computes
    the CTC loss (``ctc_cost``) on the targets of ``ctc_targets`` and,
    outside training, the WER and CER of each decoding: greedy at validation
    and test and, at test with a ``test_searcher``, the beam search (results
    named ``beam_kind``: ``beam``, or ``beam_lm`` with an n-gram LM).

    Set on the instance before fitting: ``tokenizer`` (a ``CTCTextEncoder``
    or a SpeechBrain ``SentencePiece``), ``test_searcher`` (from
    :func:`make_lm_searcher`, or None) and
    ``beam_kind``; ``test_set_name`` before each ``evaluate``. References
    are the transcripts of the CSV (``wrd``), split on spaces. Hparams:
    ``blank_index``, ``ctc_cost``, ``error_rate_computer``, ``cer_computer``
    and ``output_wer_folder``.
    """

    tokenizer = None
    test_searcher = None
    beam_kind = "beam"
    test_set_name = "test"

    def decode(self, p_ctc, wav_lens, stage):
        """The hypotheses of a batch outside training: ``{decoding: list of
        word lists}``, with ``greedy`` and, at test with a searcher,
        ``beam_kind``."""
        hyps = {}
        if stage == sb.Stage.TRAIN:
            return hyps
        hyps["greedy"] = [
            ids_to_words(self.tokenizer, seq)
            for seq in sb.decoders.ctc_greedy_decode(
                p_ctc, wav_lens, blank_id=self.hparams.blank_index
            )
        ]
        if stage == sb.Stage.TEST and self.test_searcher is not None:
            found = self.test_searcher(p_ctc, wav_lens)
            # SpeechBrain's searcher: hypotheses, best first; pyctcdecode's: texts
            hyps[self.beam_kind] = [
                (h if isinstance(h, str) else h[0].text).split(" ") for h in found
            ]
        return hyps

    def ctc_targets(self, batch, stage):
        """The CTC targets of ``batch`` (tokens, relative lengths); a recipe
        that augments its training batches with copies replicates them here."""
        return batch.tokens

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; WER/CER of each decoding outside training."""
        p_ctc, wav_lens, hyps = predictions
        tokens, tokens_lens = self.ctc_targets(batch, stage)
        loss = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        if stage != sb.Stage.TRAIN:
            targets = [wrd.split(" ") for wrd in batch.wrd]
            for kind, words in hyps.items():
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

    def error_rates(self, stage_loss):
        """``{"loss", "WER", "CER"}`` of a finished validation or test
        stage, plus ``WER_<kind>``/``CER_<kind>`` for the beam search."""
        stats = {"loss": stage_loss}
        for kind in self.wer_metrics:
            suffix = "" if kind == "greedy" else f"_{kind}"
            stats["WER" + suffix] = self.wer_metrics[kind].summarize("error_rate")
            stats["CER" + suffix] = self.cer_metrics[kind].summarize("error_rate")
        return stats

    def write_wer_files(self):
        """Writes ``<output_wer_folder>/wer_<test set>_<decoding>.txt``
        (main process only)."""
        if not if_main_process():
            return
        os.makedirs(self.hparams.output_wer_folder, exist_ok=True)
        for kind, metric in self.wer_metrics.items():
            path = Path(self.hparams.output_wer_folder) / (
                f"wer_{self.test_set_name}_{kind}.txt"
            )
            with open(path, "w", encoding="utf-8") as fout:
                metric.write_stats(fout)


class CTCProbe(CTCDecoding, ProbeBrain):
    """CTC on the weighted layer sum of a frozen encoder (decoding, metrics
    and WER files: :class:`CTCDecoding`).

    Validation logs the greedy WER and CER; each test set logs them for
    greedy decoding and, with a searcher, with ``_beam`` (or ``_beam_lm``)
    appended, and writes ``<output_wer_folder>/wer_<test set>_<decoding>.txt``.
    A BiLSTM probe gets the lengths of the batch (packed sequences) unless
    ``pack_lstm: False`` (the padded batch, as MP3S ran it).
    """

    def compute_forward(self, batch, stage):
        """Waveforms -> CTC log-probabilities (B, T', V), relative lengths
        (B,) and the hypotheses of ``decode``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.encode(wavs, wav_lens, batch.id)  # (B, T', D)
        enc = self.modules.enc
        if "lengths" in inspect.signature(enc.forward).parameters:  # RNNs
            # packed by length (pack_lstm: True, default), or padded as in MP3S
            pack = getattr(self.hparams, "pack_lstm", True)
            out = enc(feats, lengths=wav_lens if pack else None)
        else:
            out = enc(feats)
        if isinstance(out, tuple):  # (output, hidden) of an RNN
            out = out[0]
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(out))
        return p_ctc, wav_lens, self.decode(p_ctc, wav_lens, stage)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, WER/CER and layer weights; anneals on the validation
        loss, keeps the checkpoint of lowest validation WER, and writes the
        WER files of a test set."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = self.error_rates(stage_loss)
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
            self.write_wer_files()


def add_output_layer(hparams, tokenizer):
    """Builds ``ctc_lin`` (a YAML partial) with one output per CTC unit
    (blank and unk included) and adds it to ``model`` and ``modules``.

    With characters, a count other than ``output_neurons`` (if set) is only
    logged: the layer follows the training transcripts. Returns the number
    of units.
    """
    n_tokens = len(vocabulary(tokenizer))
    if isinstance(tokenizer, CTCTextEncoder):
        tokenizer.expect_len(n_tokens)
        if hparams.get("output_neurons") not in (None, n_tokens):
            logger.warning(
                f"{n_tokens} CTC tokens in the training transcripts, "
                f"{hparams['output_neurons']} expected (output_neurons in the YAML)."
            )
    ctc_lin = hparams["ctc_lin"](n_neurons=n_tokens)
    hparams["model"].append(ctc_lin)
    hparams["modules"]["ctc_lin"] = ctc_lin
    return n_tokens


def build_probe(hparams, run_opts, tokenizer):
    """The CTC probe of an MP3S ASR recipe, ready to ``fit``.

    Adds the output layer sized from ``tokenizer`` (:func:`add_output_layer`),
    loads the pretrained encoder into ``weighted_ssl`` (``pretrained_path``),
    builds the ``Brain`` and gives it the tokenizer and the test-time beam
    search (:func:`lobes.brains.lm_decoding.make_lm_searcher`).

    Arguments
    ---------
    hparams : dict
        The recipe's loaded YAML.
    run_opts : dict
        SpeechBrain's run options (from the command line).
    tokenizer : CTCTextEncoder or SentencePiece
        The CTC units.

    Returns
    -------
    CTCProbe
    """
    add_output_layer(hparams, tokenizer)
    hparams["weighted_ssl"].load_pretrained(hparams["pretrained_path"])
    asr_brain = CTCProbe(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.tokenizer = tokenizer
    asr_brain.test_searcher, asr_brain.beam_kind = make_lm_searcher(
        hparams, vocabulary(tokenizer)
    )
    return asr_brain
