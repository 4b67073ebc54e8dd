"""Data of the ASR recipes (MP3S probes and fine-tuning): the prepared CSVs
as datasets, and the output units: characters (SpeechBrain's
``CTCTextEncoder``) or subwords (a SentencePiece model).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CTCTextEncoder

from lobes.dataio.audio import filter_by_duration
from lobes.dataio.manifest import dataset_from_csv

# Every ASR manifest (LibriSpeech, Buckeye, Common Voice): checked before use.
ASR_COLUMNS = ("ID", "duration", "wav", "wrd")


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
    train_data = dataset_from_csv(hparams["train_csv"], ASR_COLUMNS)
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
    valid_data = dataset_from_csv(hparams["valid_csv"], ASR_COLUMNS)
    valid_data = valid_data.filtered_sorted(sort_key="duration")
    test_csvs = hparams["test_csv"]
    if isinstance(test_csvs, (str, Path)):
        test_csvs = [test_csvs]
    test_datasets = {}
    for csv_file in test_csvs:
        test_datasets[Path(csv_file).stem] = dataset_from_csv(
            csv_file, ASR_COLUMNS
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
