"""The MP3S LibriSpeech ASR recipe: data preparation through the recipe's
link, and end to end (greedy and beam-search WER) on the demo corpus."""

import csv
import os
import re

import pytest
from conftest import PROBE_LAYERS, REPO, run_recipe

from lobes.librispeech_prepare import prepare_librispeech

RECIPE = REPO / "recipes/LibriSpeech/ASR/MP3S"
MIXERS = ["mhsa", "hypermixing", "fastformer", "summarymixing", "mamba"]
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
    expected = {"train": 128, "dev-clean": 15, "test-clean": 15, "test-other": 15}
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
@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_and_probe(demo_data, pretrained_demo, tmp_path, mixer, probe):
    pretrained = pretrained_demo(mixer, epochs=1)
    out = tmp_path / "asr"
    run_recipe(RECIPE, probe_args(probe, mixer, pretrained, demo_data / "LibriSpeech", out))
    for test_set in TEST_SETS:
        assert "%WER" in (out / f"wer_{test_set}_greedy.txt").read_text()
