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
:class:`lobes.probing.ProbeBrain`; ``lm_decoder`` (optional).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import importlib
import inspect
import os
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CTCTextEncoder
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from lobes.dataio import filter_by_duration
from lobes.probing import ProbeBrain

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
    :func:`make_lm_searcher` or :func:`make_test_searcher`, or None) and
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
        "min_duration": hparams["avoid_if_shorter_than"],
        "max_duration": hparams["avoid_if_longer_than"],
    }
    if hparams["sorting"] in ("ascending", "descending"):
        train_data = filter_by_duration(
            train_data, "train", sort_key="duration",
            reverse=hparams["sorting"] == "descending", **limits
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif hparams["sorting"] == "random":
        train_data = filter_by_duration(train_data, "train", **limits)
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


# ---------------------------------------------------------------------------
# Beam search, with an optional n-gram LM
# ---------------------------------------------------------------------------
LM_DECODERS = {  # lm_decoder: the packages it imports
    "speechbrain": ("kenlm", "pygtrie"),
    "pyctcdecode": ("kenlm", "pyctcdecode"),
}


def check_lm_decoding(hparams):
    """Refuses, before anything runs, an n-gram LM decoding that could not
    run: ``kenlm_model_path`` (in ``test_beam_search``) set with
    ``use_beam_search`` off, a missing LM file, an unknown ``lm_decoder``
    (``speechbrain`` when the YAML has none) or its packages absent.
    Returns the LM path (or None).

    Example
    -------
    >>> check_lm_decoding({"use_beam_search": True, "test_beam_search": {}}) is None
    True
    >>> check_lm_decoding({"use_beam_search": True, "lm_decoder": "speechbrain",
    ...                    "test_beam_search": {"kenlm_model_path": "no/lm.arpa"}})
    Traceback (most recent call last):
    ...
    FileNotFoundError: kenlm_model_path: no/lm.arpa ...
    """
    path = hparams["test_beam_search"].get("kenlm_model_path")
    if path is None:
        return None
    decoder = hparams.get("lm_decoder", "speechbrain")
    if decoder not in LM_DECODERS:
        raise ValueError(
            f"lm_decoder: {decoder!r} in the YAML; use speechbrain (today's "
            "MP3S) or pyctcdecode (MP3S in 2023, the paper's runs)."
        )
    if not hparams["use_beam_search"]:
        raise ValueError(
            f"kenlm_model_path: {path} is set but use_beam_search is False: "
            "the n-gram LM is used by the beam search. Set use_beam_search: "
            "True, or kenlm_model_path: null."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"kenlm_model_path: {path} (in the YAML or on the command line) "
            "does not exist; give a KenLM .arpa or .bin n-gram of the task's "
            "language (LibriSpeech's 4-gram.arpa from https://www.openslr.org/11; "
            "for the demo, tools/make_ngram_lm.py writes one) or null."
        )
    packages = LM_DECODERS[decoder]
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as err:
            hint = (
                "`pip install -e <this repository>[lm]` or `pip install kenlm "
                "pygtrie` (kenlm compiles KenLM: a C++ compiler and cmake are "
                "needed)"
                if decoder == "speechbrain"
                else "`pip install kenlm` (it compiles KenLM: a C++ compiler and "
                "cmake are needed) and `pip install --no-deps pyctcdecode "
                "pygtrie` (pyctcdecode pins numpy < 2 but runs with numpy 2)"
            )
            raise ImportError(
                f"kenlm_model_path: {path} asks for n-gram LM decoding "
                f"(lm_decoder: {decoder}), which needs the Python packages "
                f"{' and '.join(f'`{p}`' for p in packages)}; {package} is not "
                f"installed in this environment. Install them with {hint}, or "
                "set kenlm_model_path: null to decode without LM."
            ) from err
    return path


class PyctcdecodeSearcher:
    """MP3S's LM decoding of 2023 (the paper's runs; also the authors'
    fine-tuning, ``use_language_modelling``): pyctcdecode's CTC beam search
    with a KenLM n-gram, here on the valid frames of each utterance. Takes
    the keys of ``test_beam_search`` that pyctcdecode has.

    Arguments
    ---------
    vocab_list : list of str
        The label of each CTC output.
    blank_index : int
        The blank output (an empty label for pyctcdecode).
    kenlm_model_path : str
        The ARPA or binary KenLM n-gram.
    alpha, beta : float
        LM weight and word insertion bonus (MP3S 2023: 0.5, 1.0).
    beam_size, beam_prune_logp, token_prune_min_logp, prune_history
        pyctcdecode's ``beam_width``, ``beam_prune_logp``,
        ``token_min_logp``, ``prune_history`` (what its ``decode``, which
        MP3S called, uses: 100, -10, -5, True).
    """

    def __init__(self, vocab_list, blank_index, kenlm_model_path, alpha=0.5, beta=1.0,
                 beam_size=100, beam_prune_logp=-10.0, token_prune_min_logp=-5.0,
                 prune_history=True, **unused):
        from pyctcdecode import build_ctcdecoder

        labels = ["" if i == blank_index else lab for i, lab in enumerate(vocab_list)]
        self.decoder = build_ctcdecoder(
            labels, kenlm_model_path=kenlm_model_path, alpha=alpha, beta=beta
        )
        self.decode_opts = {
            "beam_width": beam_size, "beam_prune_logp": beam_prune_logp,
            "token_min_logp": token_prune_min_logp, "prune_history": prune_history,
        }

    def __call__(self, log_probs, wav_lens):
        """Texts of a batch of CTC log-probabilities (B, T, V)."""
        lengths = torch.round(wav_lens * log_probs.shape[1]).int().tolist()
        return [  # the text of the best beam
            self.decoder.decode_beams(lp[:n].float().cpu().numpy(), **self.decode_opts)[0][0]
            for lp, n in zip(log_probs, lengths)
        ]


def make_lm_searcher(hparams, vocab_list):
    """The test-time beam search over ``vocab_list`` (the label of each CTC
    output, in index order) and the name of its results.

    SpeechBrain's ``CTCBeamSearcher`` with the settings of
    ``test_beam_search`` (and its n-gram LM, ``kenlm_model_path``, by
    shallow fusion), or pyctcdecode's with ``lm_decoder: pyctcdecode`` and
    an LM. Checked first by :func:`check_lm_decoding`.

    Returns
    -------
    searcher : callable or None
        None when ``use_beam_search`` is off.
    kind : str or None
        ``beam`` (no LM) or ``beam_lm``.

    Example
    -------
    >>> yaml = {"use_beam_search": True, "test_beam_search": {
    ...     "beam_size": 4, "blank_index": 0, "space_token": " "}}
    >>> searcher, kind = make_lm_searcher(yaml, ["<blank>", "a", " ", "b"])
    >>> kind, type(searcher).__name__
    ('beam', 'CTCBeamSearcher')
    """
    lm = check_lm_decoding(hparams)
    if not hparams["use_beam_search"]:
        return None, None
    from speechbrain.decoders.ctc import CTCBeamSearcher

    if lm is not None and hparams.get("lm_decoder", "speechbrain") == "pyctcdecode":
        searcher = PyctcdecodeSearcher(vocab_list, **hparams["test_beam_search"])
    else:
        searcher = CTCBeamSearcher(**hparams["test_beam_search"], vocab_list=vocab_list)
    return searcher, "beam" if lm is None else "beam_lm"


def make_test_searcher(hparams, tokenizer):
    """:func:`make_lm_searcher` over the tokenizer's units: the searcher (or
    None) and the name of its results (``beam`` or ``beam_lm``).

    Raises
    ------
    FileNotFoundError
        ``kenlm_model_path`` is set but no such file exists.
    """
    return make_lm_searcher(hparams, vocabulary(tokenizer))


def build_probe(hparams, run_opts, tokenizer):
    """The CTC probe of an MP3S ASR recipe, ready to ``fit``.

    Adds the output layer sized from ``tokenizer`` (:func:`add_output_layer`),
    loads the pretrained encoder into ``weighted_ssl`` (``pretrained_path``),
    builds the ``Brain`` and gives it the tokenizer and the test-time beam
    search (:func:`make_test_searcher`).

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
    asr_brain.test_searcher, asr_brain.beam_kind = make_test_searcher(hparams, tokenizer)
    return asr_brain
