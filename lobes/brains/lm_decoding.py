"""CTC beam search with an optional KenLM n-gram: SpeechBrain's shallow
fusion or pyctcdecode (as MP3S did), refused at start-up when it could not
run (:func:`check_lm_decoding`).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import importlib
import os

import torch

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
