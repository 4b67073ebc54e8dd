"""Each recipe folder, copied alone into a tree shaped like a SpeechBrain
checkout (with SpeechBrain's own recipes beside it), runs on the demo corpus.

This is how users take these recipes: `cp -r recipes/<Dataset>/<task>` into
their fork, with this package installed. Nothing of SpeechBrain's is
overwritten (our folder names differ from SpeechBrain's), and nothing outside
the copied folder is needed: the encoder definitions and the LibriSpeech
preparation come with the `lobes` package, not from a symlink or an
`!include` up the tree (SpeechBrain's own `librispeech_prepare.py`, which
writes `$data_root` CSVs, sits where our old symlink pointed: here a stub that
fails if anything imports it).

The fork's own SpeechBrain package is the one that runs where it matters:
one reporting 1.0.4 (a fork cut at SpeechBrain's `v1.1.0` tag, whose
`version.txt` says 1.0.4) runs the pretraining recipe; one reporting 1.0.3
or 0.5.16 (the BEST-RQ study's fork) is refused at import, with the version,
the supported range and what to do (`lobes.utils.versions`).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_run_rebuilds_its_encoder, run_recipe
from demo_overrides import demo_overrides

# SpeechBrain's own files at the places a copied recipe could collide with.
SPEECHBRAIN_FILES = {
    "recipes/LibriSpeech/librispeech_prepare.py": "raise ImportError('SpeechBrain own script: not ours')\n",
    "recipes/LibriSpeech/self-supervised-learning/BEST-RQ/train.py": "# SpeechBrain's BEST-RQ recipe\n",
    "recipes/LibriSpeech/ASR/CTC/train.py": "# SpeechBrain's CTC recipe\n",
    "recipes/VoxCeleb/SpeakerRec/train.py": "# SpeechBrain's speaker recipe\n",
    "recipes/IEMOCAP/emotion_recognition/train.py": "# SpeechBrain's emotion recipe\n",
    "recipes/SLURP/direct/train.py": "# SpeechBrain's SLU recipe\n",
}


def fork_with(recipe, tmp_path):
    """A SpeechBrain-shaped tree with ``recipe`` (relative to recipes/)
    copied alone into it; returns the copied folder."""
    fork = tmp_path / "speechbrain"
    for path, text in SPEECHBRAIN_FILES.items():
        (fork / path).parent.mkdir(parents=True, exist_ok=True)
        (fork / path).write_text(text)
    (fork / "speechbrain").mkdir()
    target = fork / "recipes" / recipe
    assert not target.exists(), f"{recipe} collides with SpeechBrain's own folder"
    shutil.copytree(REPO / "recipes" / recipe, target, symlinks=True)
    assert not [p for p in target.rglob("*") if p.is_symlink()], "symlinks change meaning when copied"
    return fork, target


def untouched(fork):
    for path, text in SPEECHBRAIN_FILES.items():
        assert (fork / path).read_text() == text, path


def fork_speechbrain(fork, version, monkeypatch):
    """Makes the fork's own ``speechbrain`` package (a copy of the installed
    one that reports ``version``, as a fork's ``version.txt`` does) the one
    Python imports, as in a fork's environment (``PYTHONPATH``)."""
    import speechbrain

    shutil.rmtree(fork / "speechbrain")
    shutil.copytree(Path(speechbrain.__file__).parent, fork / "speechbrain",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (fork / "speechbrain" / "version.txt").write_text(version + "\n")
    monkeypatch.setenv("PYTHONPATH", str(fork))
    found = subprocess.run(
        [sys.executable, "-c", "import speechbrain; print(speechbrain.__version__, speechbrain.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert found == [version, str(fork / "speechbrain" / "__init__.py")]


def test_pretraining_recipe_copied_alone_into_a_fork(demo_data, tmp_path, monkeypatch):
    """A fork cut at SpeechBrain's v1.1.0 tag reports 1.0.4 (the tag's
    version.txt): the same code as PyPI's 1.1.0, accepted."""
    fork, recipe = fork_with("LibriSpeech/self-supervised-learning/BEST-RQ-linear", tmp_path)
    fork_speechbrain(fork, "1.0.4", monkeypatch)
    run_recipe(recipe, [
        "hparams/bestrq_summarymixing.yaml", f"--data_folder={demo_data / 'LibriSpeech'}",
        f"--output_folder={tmp_path / 'out'}", *demo_overrides("summarymixing", epochs=1, layers=1),
    ])
    assert (tmp_path / "out" / "encoder" / "encoder.ckpt").is_file()
    untouched(fork)


@pytest.mark.parametrize("version", ["1.0.3", "0.5.16"])
def test_a_fork_of_an_older_speechbrain_is_refused_at_import(version, tmp_path, monkeypatch):
    """SpeechBrain 1.0.3 (PyPI's last 1.0, and SpeechBrain's develop for a
    year) and 0.5.16 (the BEST-RQ study's fork): refused before anything
    runs, naming the version, the supported range and what to do."""
    fork, recipe = fork_with("LibriSpeech/self-supervised-learning/BEST-RQ-linear", tmp_path)
    fork_speechbrain(fork, version, monkeypatch)
    proc = run_recipe(recipe, ["hparams/bestrq_summarymixing.yaml", "--data_folder=/nowhere"], check=False)
    assert proc.returncode != 0
    assert "SpeechBrainVersionError" in proc.stderr
    assert f"the SpeechBrain at {fork / 'speechbrain'} is {version}" in proc.stderr
    assert ">=1.1.0,<1.2" in proc.stderr and "pip install --no-deps -e" in proc.stderr
    assert not (recipe / "results").exists()


PROBES = {
    "SLURP/IntentClassification": ("linear", "SLURP", ["--number_of_epochs=1",
                                   "--train_dataloader_opts={batch_size: 4, num_workers: 0}"]),
    "LibriSpeech/ASR/MP3S": ("bilstm_ctc", "LibriSpeech", ["--number_of_epochs=1", "--lstm_hidden=16",
                             "--test_beam_search={beam_size: 2}"]),
    "VoxCeleb/SpeakerVerification": ("ecapa", "VoxCeleb1", ["--number_of_epochs=1", "--out_n_neurons=24",
                                     "--channels=[16, 16, 16, 16, 48]", "--emb_dim=16"]),
    "IEMOCAP/EmotionRecognition": ("linear", "IEMOCAP_full_release", ["--number_of_epochs=1", "--test_spk_id=1"]),
    "LibriSpeech/ASR/CTC-BEST-RQ-linear": ("train_clean_100", "LibriSpeech", [
        "--number_of_epochs=1", "--avoid_if_longer_than=3.0", "--dnn_neurons=32", "--precision=fp32",
        "--num_workers=0", "--test_beam_search={beam_size: 2}"]),
}


@pytest.mark.parametrize("recipe", [
    "SLURP/IntentClassification",
    *[pytest.param(r, marks=pytest.mark.slow) for r in PROBES if r != "SLURP/IntentClassification"],
])
def test_probe_recipe_copied_alone_into_a_fork(recipe, demo_data, pretrained_demo, tmp_path):
    fork, folder = fork_with(recipe, tmp_path)
    probe, data, extra = PROBES[recipe]
    out_key = "--experiment_folder" if recipe.startswith("IEMOCAP") else "--output_folder"
    pretrained = pretrained_demo("summarymixing") / "save"
    run_recipe(folder, [
        f"hparams/{probe}.yaml", f"--data_folder={demo_data / data}",
        f"--pretrained_path={pretrained}", f"{out_key}={tmp_path / 'out'}", *extra,
    ])
    untouched(fork)
    run = tmp_path / "out" / ("fold_1" if recipe.startswith("IEMOCAP") else "")
    assert_run_rebuilds_its_encoder(run, pretrained)  # the encoder that ran


@pytest.mark.slow
def test_librilight_recipe_copied_alone_into_a_fork(demo_data, tmp_path):
    fork, recipe = fork_with("LibriLight/self-supervised-learning/BEST-RQ-linear", tmp_path)
    run_recipe(recipe, [
        "hparams/bestrq_summarymixing.yaml", f"--data_folder={demo_data / 'LibriLight'}",
        f"--valid_data_folder={demo_data / 'LibriSpeech'}", f"--output_folder={tmp_path / 'out'}",
        "--train_splits=[small]", "--max_segment_duration=10.0",
        *[o for o in demo_overrides("summarymixing", epochs=1, layers=1) if not o.startswith("--train_splits")],
    ])
    untouched(fork)
