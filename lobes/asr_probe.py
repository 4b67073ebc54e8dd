"""CTC speech-recognition probes of the MP3S benchmark, shared by recipes.

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

(The LibriSpeech recipe, older, still defines the same probe in its own
``train.py``.) A recipe's ``train.py`` keeps SpeechBrain's usual shape: it prepares the
data, builds its datasets and audio pipeline, then uses the pieces here::

    train, valid, tests = load_datasets(hparams)
    ...  # the recipe's audio pipeline on [train, valid, *tests.values()]
    tokenizer = char_tokenizer(hparams, train, datasets)
    add_output_layer(hparams, tokenizer)
    asr_brain = CTCProbe(modules=..., hparams=..., run_opts=..., checkpointer=...)
    asr_brain.tokenizer = tokenizer
    asr_brain.test_searcher = make_test_searcher(hparams, tokenizer)

Hyperparameters read from the YAML: ``train_csv``, ``valid_csv``,
``test_csv`` (a list), ``sorting``, ``avoid_if_longer_than``,
``avoid_if_shorter_than``, ``train_dataloader_opts``, ``save_folder``,
``blank_index``, ``unk_label`` (characters) or ``output_neurons``,
``token_type``, ``character_coverage`` (subwords), ``ctc_lin`` (a partial
of the output layer), ``model``, ``modules``, ``log_softmax``,
``ctc_cost``, ``error_rate_computer``, ``cer_computer``,
``use_beam_search``, ``test_beam_search``, ``output_wer_folder``,
``train_logger``, ``checkpointer``, ``epoch_counter``, plus those of
:class:`lobes.probing.ProbeBrain`.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import inspect
import os
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CTCTextEncoder
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from lobes.probing import ProbeBrain

logger = get_logger(__name__)


class CTCProbe(ProbeBrain):
    """CTC on the weighted layer sum of a frozen encoder.

    Set ``tokenizer`` (a ``CTCTextEncoder`` or a SpeechBrain
    ``SentencePiece``) and ``test_searcher`` (a ``CTCBeamSearcher`` or None)
    on the instance before fitting; ``test_set_name`` before each
    ``evaluate``. Validation logs the greedy WER and CER; each test set logs
    them for greedy decoding and, with a searcher, with ``_beam`` appended,
    and writes ``<output_wer_folder>/wer_<test set>_{greedy,beam}.txt``.
    References are the transcripts of the CSV (``wrd``), split on spaces.
    """

    def compute_forward(self, batch, stage):
        """Waveforms -> CTC log-probabilities (B, T', V), relative lengths
        (B,) and, outside training, a dict of hypotheses: ``greedy`` (token
        id lists) and, at test with a searcher, ``beam``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.encode(wavs, wav_lens)  # (B, T', D)
        enc = self.modules.enc
        if "lengths" in inspect.signature(enc.forward).parameters:  # RNNs
            out = enc(feats, lengths=wav_lens)
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
            hyps["beam"] = self.test_searcher(p_ctc, wav_lens)
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
                    words = [ids_to_words(self.tokenizer, seq) for seq in hyp]
                else:
                    words = [h[0].text.split(" ") for h in hyp]
                self.wer_metrics[kind].append(batch.id, words, targets)
                self.cer_metrics[kind].append(batch.id, words, targets)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Fresh WER/CER trackers for validation and test."""
        if stage != sb.Stage.TRAIN:
            kinds = ["greedy"]
            if stage == sb.Stage.TEST and self.test_searcher is not None:
                kinds.append("beam")
            self.wer_metrics = {k: self.hparams.error_rate_computer() for k in kinds}
            self.cer_metrics = {k: self.hparams.cer_computer() for k in kinds}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, WER/CER and layer weights; anneals on the validation
        loss, keeps the checkpoint of lowest validation WER, and writes the
        WER files of a test set."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss}
        for kind in self.wer_metrics:
            suffix = "" if kind == "greedy" else "_beam"
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
                os.makedirs(self.hparams.output_wer_folder, exist_ok=True)
                for kind, metric in self.wer_metrics.items():
                    path = Path(self.hparams.output_wer_folder) / (
                        f"wer_{self.test_set_name}_{kind}.txt"
                    )
                    with open(path, "w", encoding="utf-8") as fout:
                        metric.write_stats(fout)


def load_datasets(hparams):
    """The datasets of the prepared CSVs, filtered and sorted by duration.

    Training utterances outside [``avoid_if_shorter_than``,
    ``avoid_if_longer_than``] seconds are left out; the training set is
    sorted as ``sorting`` says (``ascending`` or ``descending``: the
    dataloader then does not shuffle; ``random``: shuffled as the
    dataloader options say). Validation and test sets are sorted by
    duration, nothing left out.

    Arguments
    ---------
    hparams : dict
        With ``train_csv``, ``valid_csv``, ``test_csv`` (a list of CSVs, or
        one), ``sorting``, ``avoid_if_longer_than``, ``avoid_if_shorter_than``
        and ``train_dataloader_opts``.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    test_datasets : dict
        Test set name (CSV stem, e.g. ``test``) -> dataset.

    Raises
    ------
    ValueError
        An unknown ``sorting``.
    """
    train_data = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["train_csv"])
    limits = {
        "key_max_value": {"duration": hparams["avoid_if_longer_than"]},
        "key_min_value": {"duration": hparams["avoid_if_shorter_than"]},
    }
    if hparams["sorting"] in ("ascending", "descending"):
        train_data = train_data.filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending", **limits
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif hparams["sorting"] == "random":
        train_data = train_data.filtered_sorted(**limits)
    else:
        raise ValueError(
            f"sorting: {hparams['sorting']!r} in the YAML; use random, ascending or descending."
        )
    valid_data = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["valid_csv"])
    valid_data = valid_data.filtered_sorted(sort_key="duration")
    test_csvs = hparams["test_csv"]
    if isinstance(test_csvs, (str, Path)):
        test_csvs = [test_csvs]
    test_datasets = {}
    for csv_file in test_csvs:
        test_datasets[Path(csv_file).stem] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_file
        ).filtered_sorted(sort_key="duration")
    return train_data, valid_data, test_datasets


def char_tokenizer(hparams, train_data, datasets):
    """Characters as CTC units: adds the text pipeline (``wrd`` ->
    ``char_list``, ``tokens``) to ``datasets`` and sets their output keys to
    ``id, sig, wrd, tokens``.

    The ``CTCTextEncoder`` holds the characters of ``train_data``'s
    transcripts, the blank (``blank_index``) and ``unk_label`` for
    characters unseen in training; it is saved in (and, when there, read
    back from) ``<save_folder>/label_encoder.txt``.

    Arguments
    ---------
    hparams : dict
        With ``save_folder``, ``blank_index``, ``unk_label``.
    train_data : DynamicItemDataset
        The transcripts the characters are collected from.
    datasets : list of DynamicItemDataset
        Every dataset (``train_data`` included).

    Returns
    -------
    speechbrain.dataio.encoder.CTCTextEncoder
    """
    label_encoder = CTCTextEncoder()

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
    return label_encoder


def subword_tokenizer(hparams, datasets):
    """SentencePiece units as CTC units: trains (or loads) the model on the
    ``wrd`` column of ``train_csv``, adds the text pipeline (``wrd`` ->
    ``tokens``) to ``datasets`` and sets their output keys to
    ``id, sig, wrd, tokens``.

    Piece 0 is ``<pad>``, which no text encodes to: it is the CTC blank
    (``blank_index`` must be 0); piece 1 is ``<unk>`` (characters unseen in
    training). MP3S's own code leaves SentencePiece's default, where piece 0
    is ``<unk>`` *and* the blank, so that an unseen character became a blank
    in the CTC targets. The model is ``<save_folder>/<output_neurons>_<token_type>.model``.

    Arguments
    ---------
    hparams : dict
        With ``train_csv``, ``save_folder``, ``output_neurons`` (vocabulary
        size, blank and unk included), ``token_type`` (``bpe``, ``unigram``
        or ``char``), ``character_coverage`` and ``blank_index``.
    datasets : list of DynamicItemDataset
        Every dataset.

    Returns
    -------
    speechbrain.tokenizers.SentencePiece.SentencePiece
    """
    from speechbrain.tokenizers.SentencePiece import SentencePiece

    if hparams["blank_index"] != 0:
        raise ValueError(
            f"blank_index: {hparams['blank_index']} in the YAML; with SentencePiece "
            "units the blank is piece 0 (<pad>): set blank_index: 0."
        )
    tokenizer = SentencePiece(
        model_dir=hparams["save_folder"],
        vocab_size=hparams["output_neurons"],
        annotation_train=hparams["train_csv"],
        annotation_read="wrd",
        model_type=hparams["token_type"],
        character_coverage=hparams["character_coverage"],
        pad_id=0,
        unk_id=1,
    )

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        yield wrd
        yield torch.LongTensor(tokenizer.sp.encode_as_ids(wrd))

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])
    return tokenizer


def _is_sentencepiece(tokenizer):
    return hasattr(tokenizer, "sp")


def _unsupported(tokenizer):
    return TypeError(
        f"Unsupported tokenizer {type(tokenizer).__name__}: use a CTCTextEncoder "
        "(characters) or a SpeechBrain SentencePiece."
    )


def vocabulary(tokenizer):
    """The CTC output units, in index order (the ``vocab_list`` of a
    ``CTCBeamSearcher``).

    Example
    -------
    >>> enc = CTCTextEncoder()
    >>> enc.insert_blank(index=0)
    >>> enc.update_from_iterable("ab c", sequence_input=True)
    >>> vocabulary(enc)
    ['<blank>', 'a', 'b', ' ', 'c']
    """
    if _is_sentencepiece(tokenizer):
        return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.sp.vocab_size())]
    if isinstance(tokenizer, CTCTextEncoder):
        return [tokenizer.ind2lab[i] for i in range(len(tokenizer))]
    raise _unsupported(tokenizer)


def ids_to_words(tokenizer, ids):
    """Decodes one sequence of unit ids (blanks and repeats already removed,
    as ``ctc_greedy_decode`` returns them) to a list of words.

    Example
    -------
    >>> enc = CTCTextEncoder()
    >>> enc.insert_blank(index=0)
    >>> enc.update_from_iterable("ab c", sequence_input=True)
    >>> ids_to_words(enc, [1, 2, 3, 4, 1])
    ['ab', 'ca']
    """
    if _is_sentencepiece(tokenizer):
        return tokenizer.sp.decode_ids([int(i) for i in ids]).split(" ")
    if isinstance(tokenizer, CTCTextEncoder):
        return "".join(tokenizer.decode_ndim(ids)).split(" ")
    raise _unsupported(tokenizer)


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


def make_test_searcher(hparams, tokenizer):
    """SpeechBrain's ``CTCBeamSearcher`` over the tokenizer's units
    (``test_beam_search`` in the YAML; None if ``use_beam_search`` is off).

    Raises
    ------
    FileNotFoundError
        ``kenlm_model_path`` is set but no such file exists.
    """
    if not hparams["use_beam_search"]:
        return None
    from speechbrain.decoders.ctc import CTCBeamSearcher

    kenlm = hparams["test_beam_search"].get("kenlm_model_path")
    if kenlm is not None and not os.path.isfile(kenlm):
        raise FileNotFoundError(
            f"kenlm_model_path: {kenlm} (in the YAML) does not exist; give a "
            "KenLM .arpa/.bin n-gram trained on the task's language, or null."
        )
    return CTCBeamSearcher(**hparams["test_beam_search"], vocab_list=vocabulary(tokenizer))
