"""The MP3S LibriSpeech ASR recipe: data preparation through the recipe's
link, end to end (greedy and beam-search WER) on the demo corpus, and the
n-gram LM decoding: a demo LM (tools/make_ngram_lm.py), refused without the
``kenlm`` package, used by the beam search with it."""

import csv
import os
import re
from collections import defaultdict

import pytest
import torch
from conftest import PAPER_MIXERS, REPO, run_recipe
from make_ngram_lm import estimate, read_sentences, write_arpa
from speechbrain.dataio.encoder import CTCTextEncoder

from lobes.brains.lm_decoding import make_lm_searcher
from lobes.dataio.asr import vocabulary
from lobes.dataio.librispeech_prepare import prepare_librispeech

RECIPE = REPO / "recipes/LibriSpeech/ASR/MP3S"
TINY_PROBES = {
    "bilstm_ctc": ["--lstm_hidden=32"],
    "contextnet": [
        "--contextnet_num_blocks=2",
        "--contextnet_num_layers=1",
        "--contextnet_conv_channels=[32, 32]",
        "--contextnet_strides=[1, 1]",
        "--contextnet_out_channels=32",
    ],
}
TEST_SETS = ["test-clean", "test-other"]


def probe_args(hparams, mixer, pretrained, data, out, epochs=1):
    """Command line of a demo-size ASR probe run on ``pretrained``."""
    return [
        f"hparams/{hparams}.yaml",
        f"--data_folder={data}",
        f"--pretrained_path={pretrained / 'save'}",
        f"--output_folder={out}",
        f"--number_of_epochs={epochs}",
        "--batch_size=8",
        "--test_batch_size=8",
        "--test_beam_search={beam_size: 8}",
        *TINY_PROBES[hparams],
    ]


def test_prepare_demo_layout(demo_data, tmp_path):
    prepare_librispeech(
        demo_data / "LibriSpeech", tmp_path, tr_splits=["train-clean-100"],
        dev_splits=["dev-clean"], te_splits=TEST_SETS,
        merge_lst=["train-clean-100"], merge_name="train.csv",
    )
    expected = {"train": 128, "dev-clean": 15, "test-clean": 32, "test-other": 15}
    for name, count in expected.items():
        with open(tmp_path / f"{name}.csv", newline="", encoding="utf-8") as fin:
            rows = list(csv.DictReader(fin))
        assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
        assert len(rows) == count
        assert all(r["wrd"] == r["wrd"].upper() and os.path.isabs(r["wav"]) for r in rows)


def test_prepare_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_librispeech(tmp_path / "nowhere", tmp_path, tr_splits=["train-clean-100"])


def test_bilstm_ctc_end_to_end(demo_data, pretrained_demo, tmp_path):
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / "asr"
    run_recipe(
        RECIPE,
        probe_args("bilstm_ctc", "summarymixing", pretrained, demo_data / "LibriSpeech", out),
    )
    log = (out / "train_log.txt").read_text()
    assert re.search(r"valid WER: [\d.e+-]+", log), log
    for test_set in TEST_SETS:
        assert re.search(rf"test set: {test_set}.*test WER: .*test WER_beam: ", log), log
        for kind in ("greedy", "beam"):
            text = (out / f"wer_{test_set}_{kind}.txt").read_text()
            assert "%WER" in text
    # every CTC output decodes to a character (an int label once crashed the
    # greedy decoding whenever the probe emitted the unk index)
    from speechbrain.dataio.encoder import CTCTextEncoder

    encoder = CTCTextEncoder()
    encoder.load(out / "save" / "label_encoder.txt")
    labels = [encoder.ind2lab[i] for i in range(len(encoder))]
    assert all(isinstance(label, str) for label in labels), labels
    assert labels[0] == "<blank>" and "<unk>" in labels, labels


@pytest.mark.slow
@pytest.mark.parametrize("probe", sorted(TINY_PROBES))
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe):
    pretrained = pretrained_demo(mixer, epochs=1)
    out = tmp_path / "asr"
    run_recipe(RECIPE, probe_args(probe, mixer, pretrained, demo_data / "LibriSpeech", out))
    for test_set in TEST_SETS:
        assert "%WER" in (out / f"wer_{test_set}_greedy.txt").read_text()


# ---------------------------------------------------------------------------
# n-gram LM decoding
# ---------------------------------------------------------------------------
def demo_lm(demo_data, path, order=3):
    """The demo LM: an ARPA n-gram of the demo training transcripts."""
    write_arpa(estimate(read_sentences([demo_data / "LibriSpeech/train-clean-100"]), order), path)
    return path


def read_arpa(path):
    """{k: {k-gram: (log10 p, log10 backoff)}} of an ARPA file, checking
    the counts of its header."""
    declared, grams, order = {}, defaultdict(dict), None
    for line in path.read_text().splitlines():
        if m := re.match(r"ngram (\d+)=(\d+)$", line):
            declared[int(m.group(1))] = int(m.group(2))
        elif m := re.match(r"\\(\d+)-grams:$", line):
            order = int(m.group(1))
        elif order and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            assert len(gram) == order, line
            grams[order][gram] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    assert {k: len(v) for k, v in grams.items()} == declared
    return grams


def arpa_log10_prob(grams, context, word):
    """log10 p(word | context) by the ARPA backoff rule."""
    context = tuple(context)[-(len(grams) - 1):] if len(grams) > 1 else ()
    gram = (*context, word)
    if gram in grams[len(gram)]:
        return grams[len(gram)][gram][0]
    if not context:
        return grams[1][("<unk>",)][0]
    backoff = grams[len(context)].get(context, (0.0, 0.0))[1]
    return backoff + arpa_log10_prob(grams, context[1:], word)


def test_demo_lm_is_a_normalised_arpa_kneser_ney(demo_data, tmp_path):
    """The ARPA file the demo LM tool writes is a proper LM: every context
    in it (and an unseen one) gives a distribution over the vocabulary
    (with </s> and <unk>) that sums to 1 by the standard backoff rule, and
    seen word sequences score higher than scrambled ones."""
    grams = read_arpa(demo_lm(demo_data, tmp_path / "lm.arpa"))
    vocab = [g[0] for g in grams[1] if g[0] != "<s>"]
    assert {"</s>", "<unk>"} <= set(vocab) and ("<s>",) in grams[1]
    assert grams[1][("<s>",)][0] == -99.0
    contexts = [(), ("<s>",), ("ZZZUNSEEN",), *list(grams[2])[:40], *list(grams[3])[:40]]
    for context in contexts:
        context = context[-2:]
        total = sum(10 ** arpa_log10_prob(grams, context, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), context
    sentence = read_sentences([demo_data / "LibriSpeech/train-clean-100"])[0]

    def score(words):
        seq, total = ["<s>"], 0.0
        for w in [*words, "</s>"]:
            total += arpa_log10_prob(grams, seq, w)
            seq.append(w)
        return total

    assert score(sentence) > score(sentence[::-1]) + 1.0
    with pytest.raises(FileNotFoundError, match="trans.txt"):
        read_sentences([tmp_path])


def test_lm_decoding_refused_without_kenlm(demo_data, pretrained_demo, tmp_path, monkeypatch):
    """With ``kenlm_model_path`` set and no ``kenlm`` package, the recipe
    stops at once (before preparing data or training) and says how to
    install it or run without LM."""
    lm = demo_lm(demo_data, tmp_path / "lm.arpa")
    blocker = tmp_path / "no_kenlm"
    blocker.mkdir()
    (blocker / "kenlm.py").write_text("raise ImportError('kenlm is not installed (test)')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "asr"
    proc = run_recipe(RECIPE, [
        "hparams/bilstm_ctc.yaml", f"--data_folder={demo_data / 'LibriSpeech'}",
        f"--pretrained_path={pretrained_demo('summarymixing') / 'save'}", f"--output_folder={out}",
        f"--kenlm_model_path={lm}",
        *TINY_PROBES["bilstm_ctc"],
    ], check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert re.search(r"ImportError: kenlm_model_path: .*lm.arpa asks for n-gram LM decoding "
                     r"\(lm_decoder: speechbrain\), which needs the Python packages `kenlm` and "
                     r"`pygtrie`; kenlm is not installed", output), output[-3000:]
    assert "pip install -e <this repository>[lm]" in output and "kenlm_model_path: null" in output
    # refused before anything ran: no data prepared, no epoch
    assert not (out / "train.csv").exists() and not (out / "train_log.txt").exists()


@pytest.mark.parametrize("decoder", ["speechbrain", "pyctcdecode"])
def test_lm_changes_the_beam_search(demo_data, tmp_path, decoder):
    """Through the recipes' searcher (``lobes.brains.lm_decoding.make_lm_searcher``
    on a character vocabulary with blank, space and unk; SpeechBrain's or
    MP3S 2023's pyctcdecode): acoustics that
    favour a misspelt word decode to it without LM, and to the word of the
    demo LM with it."""
    for package in ("kenlm", "pygtrie", *(["pyctcdecode"] if decoder == "pyctcdecode" else [])):
        pytest.importorskip(package)
    lm = demo_lm(demo_data, tmp_path / "lm.arpa")
    sentences = read_sentences([demo_data / "LibriSpeech/train-clean-100"])
    vocab = {w for s in sentences for w in s}
    first, word = next((a, b) for s in sentences for a, b in zip(s, s[1:])
                       if len(a) >= 3 and len(b) >= 4 and b[:-1] + "Q" not in vocab)
    typo = word[:-1] + "Q"
    chars = sorted({c for w in vocab for c in w} | {"Q", " "})
    labels = ["<blank>", *chars, "<unk>"]
    index = {c: i for i, c in enumerate(labels)}
    frames = []
    for k, c in enumerate(f"{first} {word}"):
        probs = torch.full((len(labels),), 1e-4)
        if k == len(first) + len(word):  # last letter: the typo wins acoustically
            probs[index["Q"]], probs[index[c]] = 0.6, 0.35
        else:
            probs[index[c]] = 0.9
        blank = torch.full((len(labels),), 1e-4)
        blank[0] = 0.9
        frames += [probs / probs.sum(), blank / blank.sum()]
    log_probs = torch.stack(frames).log().unsqueeze(0)

    Labels = CTCTextEncoder()
    Labels.update_from_iterable(labels, sequence_input=False)
    assert vocabulary(Labels) == labels

    yaml = {"use_beam_search": True, "lm_decoder": decoder, "test_beam_search": {
        "beam_size": 16, "blank_index": 0, "space_token": " ", "alpha": 0.8, "beta": 1.2}}
    def best(searcher):  # SpeechBrain: hypotheses; pyctcdecode: texts
        out = searcher(log_probs, torch.ones(1))[0]
        return out if isinstance(out, str) else out[0].text

    no_lm, kind = make_lm_searcher(yaml, vocabulary(Labels))
    assert kind == "beam"
    assert best(no_lm) == f"{first} {typo}"
    yaml["test_beam_search"]["kenlm_model_path"] = str(lm)
    with_lm, kind = make_lm_searcher(yaml, vocabulary(Labels))
    assert kind == "beam_lm"
    assert type(with_lm).__name__ == ("CTCBeamSearcher" if decoder == "speechbrain"
                                      else "PyctcdecodeSearcher")
    assert best(with_lm) == f"{first} {word}"


def test_lm_decoding_on_demo(demo_data, pretrained_demo, tmp_path):
    """The LM rows' command on the demo: a trained probe run again with
    ``kenlm_model_path`` is only tested (no new epoch), with greedy and
    beam + LM WERs per test set."""
    pytest.importorskip("kenlm")
    pytest.importorskip("pygtrie")
    pretrained = pretrained_demo("summarymixing")
    out = tmp_path / "asr"
    args = probe_args("bilstm_ctc", "summarymixing", pretrained, demo_data / "LibriSpeech", out)
    run_recipe(RECIPE, args)
    lm = demo_lm(demo_data, tmp_path / "lm.arpa")
    args = [a for a in args if not a.startswith("--test_beam_search")]
    run_recipe(RECIPE, [*args, f"--kenlm_model_path={lm}",
                        "--test_beam_search={beam_size: 8, alpha: 0.5, beta: 1.0}"])
    log = (out / "train_log.txt").read_text()
    assert len(re.findall(r"^epoch: ", log, re.M)) == 1  # not trained again
    for test_set in TEST_SETS:
        assert re.search(rf"test set: {test_set}.*test WER: .*test WER_beam_lm: ", log), log
        assert "%WER" in (out / f"wer_{test_set}_beam_lm.txt").read_text()
