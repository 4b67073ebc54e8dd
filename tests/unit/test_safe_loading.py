"""Loading files from strangers runs none of their code (issue 21).

Each entry point that reads a checkpoint, a statistics or state file, or a
model folder's YAML is given a file whose loading would run a shell command
(a pickle whose ``__reduce__`` calls ``os.system``, a YAML ``!apply:``);
each refuses it with the file and the reason, and the command never ran
(its marker file does not exist). Files of earlier versions still load.
"""

import os
import random
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO, save_normalizer
from speechbrain.processing.features import InputNormalization

from lobes.nnet.encoder import ConformerEncoder
from lobes.utils.safe_io import UnsafeFileError, load_tensors

MODEL_40517BE = REPO / "tests/data/model_40517be"


class Payload:
    """Pickled, it makes ``torch.load(weights_only=False)`` run a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "the payload of the malicious file ran"


def malicious(path, marker, state=None):
    """``torch.save`` of ``state`` (a dict) with a payload inside."""
    state = dict(state or {})
    state["_payload"] = Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def tiny_encoder():
    torch.manual_seed(0)
    return ConformerEncoder("summarymixing", num_layers=1, d_model=16, nhead=1, d_ffn=32,
                            kernel_size=3, mixer_kwargs={"local_proj_hid_dim": [16],
                                                         "local_proj_out_dim": 16,
                                                         "summary_hid_dim": [16]})


def statistics(path):
    norm = InputNormalization(norm_type="global")
    norm(torch.randn(2, 50, 80) * 3 + 1, torch.ones(2))
    save_normalizer(norm, path)
    return path


def pretraining_ckpt(folder, encoder=None, payload_in=None, marker=None):
    """A CKPT+ folder of the pretraining recipe (model.ckpt: [encoder, head])."""
    encoder = encoder or tiny_encoder()
    folder.mkdir(parents=True)
    state = torch.nn.ModuleList([encoder, torch.nn.Linear(16, 8)]).state_dict()
    if payload_in == "model.ckpt":
        malicious(folder / "model.ckpt", marker, state)
    else:
        torch.save(state, folder / "model.ckpt")
    if payload_in == "normalize.ckpt":
        stats = torch.load(statistics(folder / "normalize.ckpt"), weights_only=True)
        malicious(folder / "normalize.ckpt", marker, stats)
    else:
        statistics(folder / "normalize.ckpt")
    (folder / "CKPT.yaml").write_text("steps: 10\nunixtime: 1.0\nend-of-epoch: true\n")
    return folder


# ---------------------------------------------------------------------------
# Checkpoints: --pretrained_path (probes, fine-tuning), export, convert
# ---------------------------------------------------------------------------
def test_a_pickle_that_runs_code_is_refused_with_its_path(tmp_path, marker):
    path = malicious(tmp_path / "x.ckpt", marker, {"w": torch.ones(2)})
    with pytest.raises(UnsafeFileError, match=rf"{re.escape(str(path))}: it holds Python objects \(posix.system\)"):
        load_tensors(path, what="checkpoint")
    truncated = tmp_path / "cut.ckpt"
    torch.save({"w": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(UnsafeFileError, match=rf"Cannot read the checkpoint {re.escape(str(truncated))}: it is not a complete"):
        load_tensors(truncated, what="checkpoint")


@pytest.mark.parametrize("form", ["exported", "save", "CKPT"])
def test_pretrained_path_with_a_malicious_encoder_is_refused(tmp_path, marker, form):
    """The probes' and fine-tuning's --pretrained_path (load_pretrained,
    encoder_from_checkpoint) in its three forms."""
    from lobes.deploy.loading import encoder_from_checkpoint, load_pretrained

    if form == "exported":
        source = tmp_path / "model"
        malicious(source / "encoder.ckpt", marker, tiny_encoder().state_dict())
        statistics(source / "normalizer.ckpt")
        bad = source / "encoder.ckpt"
    else:
        ckpt = pretraining_ckpt(tmp_path / "save" / "CKPT+1", payload_in="model.ckpt", marker=marker)
        source, bad = (ckpt.parent if form == "save" else ckpt), ckpt / "model.ckpt"
    with pytest.raises(UnsafeFileError, match=rf"encoder checkpoint {re.escape(str(bad))}: it holds Python objects"):
        encoder_from_checkpoint(source)
    with pytest.raises(UnsafeFileError, match=re.escape(str(bad))):
        load_pretrained(source, tiny_encoder())


def test_export_refuses_a_malicious_checkpoint(tmp_path, marker, capsys):
    from lobes.deploy.export import main as export_main

    ckpt = pretraining_ckpt(tmp_path / "CKPT+1", payload_in="model.ckpt", marker=marker)
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{ckpt / 'model.ckpt'}: it holds Python objects" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload_in", ["model.ckpt", "normalize.ckpt"])
def test_convert_refuses_a_malicious_model_or_statistics_file(tmp_path, marker, capsys, payload_in):
    from lobes.deploy.convert import main as convert_main

    ckpt = pretraining_ckpt(tmp_path / "CKPT+1", payload_in=payload_in, marker=marker)
    args = ["--checkpoint", str(ckpt), "--layout", "authors", "--out", str(tmp_path / "out")]
    assert convert_main(args) == 1
    err = capsys.readouterr().err
    assert f"{ckpt / payload_in}: it holds Python objects" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# A run folder that is resumed: random state, training statistics, SpeechBrain's recoverables
# ---------------------------------------------------------------------------
def test_a_malicious_random_state_is_refused_when_resuming(tmp_path, marker):
    from lobes.utils.checkpoint import AtomicCheckpointer, RandomState

    ckpt = AtomicCheckpointer(tmp_path / "save", {"random_state": RandomState()})
    saved = ckpt.save_checkpoint()
    malicious(saved.path / "random_state.ckpt", marker, {"torch": torch.get_rng_state()})
    with pytest.raises(UnsafeFileError, match=re.escape(f"random state file {saved.path / 'random_state.ckpt'}")):
        ckpt.recover_if_possible()


def test_random_states_of_earlier_versions_still_load(tmp_path):
    """Before issue 21 numpy's state was saved as an array: loadable (numpy
    arrays of numbers only), and the new format round-trips."""
    from lobes.utils.checkpoint import RandomState

    old = tmp_path / "old.ckpt"
    torch.save({"torch": torch.get_rng_state(), "cuda": [], "numpy": np.random.get_state(),
                "random": random.getstate()}, old)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    RandomState().load(old)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    new = tmp_path / "new.ckpt"
    RandomState().save(new)
    load_tensors(new)  # plain tensors and numbers
    expected = (torch.rand(3), np.random.rand(3), random.random())
    RandomState().load(new)
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


@pytest.mark.parametrize("name", ["model", "optimizer"])
def test_speechbrain_recoverables_refuse_a_malicious_file(tmp_path, marker, name):
    """SpeechBrain 1.1.2 loads modules and optimizers with torch.load's
    default, weights_only=True since torch 2.6: refused, and named."""
    from lobes.utils.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = AtomicCheckpointer(tmp_path / "save", {"model": model, "optimizer": opt})
    saved = ckpt.save_checkpoint()
    state = torch.load(saved.path / f"{name}.ckpt", weights_only=True)
    malicious(saved.path / f"{name}.ckpt", marker, state)
    with pytest.raises(UnsafeFileError, match=rf"Cannot resume from {re.escape(str(saved.path))}: .*{name}.ckpt: it holds Python objects"):
        ckpt.recover_if_possible()


def test_malicious_training_statistics_and_layer_weights_are_refused(tmp_path, marker):
    from lobes.brains.mixins import _TrainStats
    from lobes.nnet.weighted_sum import WeightedLayerSum

    class Brain:
        pass

    stats = malicious(tmp_path / "train_stats.ckpt", marker, {"stats": {"acc_sum": 1.0}})
    with pytest.raises(UnsafeFileError, match=re.escape(str(stats))):
        _TrainStats(Brain()).load(stats, end_of_epoch=False)
    probe = WeightedLayerSum(tiny_encoder())
    weights = malicious(tmp_path / "weighted_ssl.ckpt", marker, {"weights": torch.zeros(2)})
    with pytest.raises(UnsafeFileError, match=re.escape(str(weights))):
        probe.load_weights(weights)


def test_extract_refuses_malicious_layer_weights(tmp_path, marker, capsys):
    from lobes.deploy.extract import main as extract_main

    weights = malicious(tmp_path / "w.pt", marker, {"weights": torch.zeros(2)})
    args = ["--model", str(MODEL_40517BE), "--wav", str(tmp_path / "a.wav"),
            "--out", str(tmp_path / "out"), "--layers", "weighted", "--layer_weights", str(weights)]
    assert extract_main(args) == 1
    assert f"{weights}: it holds Python objects" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A model folder's hyperparams.yaml
# ---------------------------------------------------------------------------
def model_folder_with(tmp_path, marker, how):
    folder = tmp_path / "model"
    shutil.copytree(MODEL_40517BE, folder)
    text = (folder / "hyperparams.yaml").read_text()
    payload = {
        "apply": f"__x: !apply:os.system [touch {marker}]\n",
        "python_tag": f"x: !!python/object/apply:os.system [touch {marker}]\n",
        "tuple": f"x: (1, !!python/object/apply:os.system [touch {marker}])\n",
        "applyref": f"x: !applyref:os.system [touch {marker}]\n",
        "in_an_argument": None,
    }[how]
    if payload is None:  # a stranger's call hidden in the encoder's arguments
        text = text.replace("encoder_config:\n", f"evil: !apply:os.system [touch {marker}]\nencoder_config:\n", 1)
    else:
        text = payload + text
    (folder / "hyperparams.yaml").write_text(text)
    return folder


@pytest.mark.parametrize("how", ["apply", "python_tag", "tuple", "applyref", "in_an_argument"])
def test_a_model_folder_yaml_that_runs_code_is_refused(tmp_path, marker, how):
    from lobes.deploy.inference import BestRQEncoder
    from lobes.deploy.model_yaml import UntrustedYAMLError

    folder = model_folder_with(tmp_path, marker, how)
    with pytest.raises(UntrustedYAMLError, match=rf"{re.escape(str(folder / 'hyperparams.yaml'))} was not loaded.*Nothing in it was run"):
        BestRQEncoder.from_hparams(source=str(folder), run_opts={"device": "cpu"})


def test_extract_refuses_a_model_folder_yaml_that_runs_code(tmp_path, marker, capsys):
    import soundfile as sf

    from lobes.deploy.extract import main as extract_main

    folder = model_folder_with(tmp_path, marker, "apply")
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype="float32"), 16000)
    assert extract_main(["--model", str(folder), "--wav", str(wav), "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "was not loaded" in err and "!apply:os.system" in err


def test_model_folders_of_this_and_earlier_versions_pass_the_check(tmp_path):
    from lobes.deploy.export import HPARAMS_BODY, hparams_yaml
    from lobes.deploy.model_yaml import check_model_yaml

    check_model_yaml((MODEL_40517BE / "hyperparams.yaml").read_text(), "40517be")
    encoder = tiny_encoder()
    check_model_yaml(hparams_yaml(encoder.config, tmp_path, 1000), "now")
    assert "!new:" in HPARAMS_BODY  # what the allow-list is read from
