"""Numeric hyperparameters are checked before any work, from the command
line and the YAML (issue 21): refused with the key, where it was set and
what it takes, before anything is built or prepared."""

import glob

import pytest
import speechbrain as sb
from conftest import REPO

import lobes.recipe
from lobes.recipe import load_hparams, parse_arguments
from lobes.utils.hparam_values import check_values

PRETRAIN_YAML = REPO / "recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear/hparams/bestrq_fastformer.yaml"
VOXCELEB_YAML = REPO / "recipes/VoxCeleb/SpeakerVerification/hparams/ecapa.yaml"
ALL_YAMLS = sorted(glob.glob(str(REPO / "recipes/**/hparams/*.yaml"), recursive=True))


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if HyperPyYAML builds anything (the model, the data)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the YAML was built before its values were checked")

    monkeypatch.setattr(lobes.recipe, "load_hyperpyyaml", refuse)


def overrides_of(argv):
    return parse_arguments(["x.yaml", *argv])[2]


def test_a_learning_rate_that_is_not_a_number_is_refused_before_anything_is_built(
        tmp_path, nothing_built):
    overrides = overrides_of(["--lr=fast", f"--output_folder={tmp_path}", "--data_folder=x"])
    with pytest.raises(ValueError, match=r"lr = 'fast' \(command line --lr\): expected a number > 0"):
        load_hparams(PRETRAIN_YAML, overrides)
    assert not any(tmp_path.iterdir())


def test_a_negative_batch_length_in_the_yaml_is_refused(tmp_path, nothing_built):
    text = PRETRAIN_YAML.read_text().replace("max_batch_length: 400", "max_batch_length: -30")
    assert "max_batch_length: -30" in text
    yaml_file = tmp_path / "bestrq_fastformer.yaml"
    yaml_file.write_text(text)
    with pytest.raises(ValueError, match=(
            rf"dynamic_batch_sampler.max_batch_length = -30 \(in {yaml_file}\): expected a number > 0")):
        load_hparams(yaml_file, f"output_folder: {tmp_path}\ndata_folder: x")


def test_a_probes_negative_batch_size_is_refused(tmp_path, nothing_built):
    overrides = overrides_of(["--train_dataloader_opts={batch_size: -4}",
                              "--pretrained_path=x", "--data_folder=x", f"--output_folder={tmp_path}"])
    with pytest.raises(ValueError, match=(
            r"train_dataloader_opts.batch_size = -4 \(command line --train_dataloader_opts\): "
            r"expected a whole number >= 1")):
        load_hparams(VOXCELEB_YAML, overrides)


def test_every_wrong_value_is_named_at_once(nothing_built):
    overrides = overrides_of(["--number_of_epochs=2.5", "--mask_prob=1.5", "--seed=abc",
                              "--data_folder=x"])
    with pytest.raises(ValueError) as err:
        load_hparams(PRETRAIN_YAML, overrides)
    for text in ("number_of_epochs = 2.5", "expected a whole number >= 1",
                 "mask_prob = 1.5", "between 0 and 1", "seed = 'abc'"):
        assert text in str(err.value)


def test_numbers_yaml_reads_as_numbers_are_accepted():
    """``--lr=1e-4``: PyYAML reads text, HyperPyYAML a number: made a number."""
    overrides = {"lr": "1e-4", "train_dataloader_opts": {"batch_size": "8"}}
    check_values(PRETRAIN_YAML.read_text(), overrides)
    assert overrides == {"lr": 1e-4, "train_dataloader_opts": {"batch_size": 8}}


def test_run_options_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"--grad_accumulation_factor=0: expected a whole number >= 1"):
        parse_arguments(["x.yaml", "--grad_accumulation_factor=0"])
    with pytest.raises(ValueError, match=r"--max_grad_norm=-1.0: expected a number > 0"):
        parse_arguments(["x.yaml", "--max_grad_norm=-1"])
    assert sb.parse_arguments(["x.yaml", "--grad_accumulation_factor=0"])  # SpeechBrain's own: accepted


@pytest.mark.parametrize("yaml_file", ALL_YAMLS, ids=lambda p: p.split("recipes/")[1])
def test_every_recipe_yaml_passes(yaml_file):
    check_values(open(yaml_file, encoding="utf-8").read(), {}, yaml_file)
